"""`faceprint migrate`: re-embedding a collection from its kept chips with another model, on the real photos.

The gallery is enrolled once with the default model (dlib-resnet-v1, chips kept) and copied for each test; the
target is the ArcFace-style ``faceplugin-mbf`` of the faceplugin pack, installed with npm exactly as a user
does (like tests/test_model_packs.py, this fails rather than skips without npm: the migration between two
real models would otherwise go untested).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faceprint.align.chips import extract_chips
from faceprint.align.templates import chip_template, reframe_chips, reframe_coverage
from faceprint.cli import app
from faceprint.errors import ModelError
from faceprint.gallery import ContractMismatch, EmbeddedGallery, GalleryCorrupt, enrol_images
from faceprint.gallery.errors import GalleryError, MigrationUnsupported, MissingChips
from faceprint.gallery.migrate import copy_collection, migrate_collection, plan_migration, run_migration
from faceprint.image import load_image
from faceprint.matching import DEFAULT_FMR, cosine_scores, shipped_calibration
from faceprint.models.registry import ModelRegistry
from faceprint.models.store import ModelStore
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.types import Faceprint
from tests.conftest import IDENTITIES, identity_photos

KEY = bytes.fromhex("5a" * 32)
TARGET = "faceplugin-mbf"
SOURCE = "dlib-resnet-v1"
ENROLLED_PER_PERSON = 3  # the last photo of each person with two or more is kept back as the probe


@dataclass(frozen=True)
class Enrolled:
    path: Path  # a closed gallery: copy it, never open it in place
    templates: int
    subjects: int
    probes_dlib: dict[str, Faceprint]  # person → faceprint of a photo that was not enrolled
    probes_mbf: dict[str, Faceprint]  # the same faces embedded with the target model
    fresh_mbf: dict[str, np.ndarray]  # person → the enrolled photos embedded with the target model (N×512)


@pytest.fixture(scope="module")
def model_store(faceplugin_store: Path, cache_dir: Path) -> Path:
    """`faceprint models install faceplugin` into a fresh model store."""
    return faceplugin_store


@pytest.fixture(scope="module")
def registry(model_store: Path) -> ModelRegistry:
    return ModelRegistry(ModelStore(model_store))


@pytest.fixture(scope="module")
def mbf(model_store: Path) -> Pipeline:
    # The cascade's boxes, as the source gallery's: the 68-point model adapts to the detector that made them.
    return Pipeline(PipelineConfig(embedder=TARGET, detector="cascade", model_dir=model_store))


def _with_model(model: Pipeline, photo: Path, box: tuple[float, float, float, float]) -> Faceprint:
    """The face in ``box`` (found by the default detector) embedded by ``model``, with its own landmarks."""
    img = load_image(photo)
    (fp,) = model.embed(img, model.landmark(img, [(box, 1.0)]))
    return fp


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory, pipeline: Pipeline, mbf: Pipeline) -> Enrolled:
    path = tmp_path_factory.mktemp("enrolled") / "gallery"
    probes_dlib: dict[str, Faceprint] = {}
    probes_mbf: dict[str, Faceprint] = {}
    fresh_mbf: dict[str, np.ndarray] = {}
    with EmbeddedGallery(path, key=KEY) as g:
        for person in sorted(p.name for p in IDENTITIES.iterdir()):
            photos = identity_photos(person)
            enrol = photos[: min(ENROLLED_PER_PERSON, max(1, len(photos) - 1))]
            report = enrol_images(g, pipeline, person, enrol, keep_chips=True)
            assert report.accepted, report.to_dict()  # (a photo the detector finds ambiguous may be rejected)
            boxes = {t.id: t.box for t in g.list_templates(person)}
            fresh_mbf[person] = np.stack(
                [_with_model(mbf, Path(o.source), boxes[o.template_id]).vector for o in report.accepted]  # type: ignore[index,arg-type]
            )
            if len(photos) > len(enrol):
                probes_dlib[person] = pipeline.largest_face(load_image(photos[-1]))[0]
                box = probes_dlib[person].detection.box  # type: ignore[union-attr]
                probes_mbf[person] = _with_model(mbf, photos[-1], box)
        stats = g.stats()
        # Search once so an index snapshot is saved on close: the migration must make it unusable.
        g.identify([probes_dlib["person01"]])
    assert stats.templates >= 20 and stats.subjects == 9
    return Enrolled(path, stats.templates, stats.subjects, probes_dlib, probes_mbf, fresh_mbf)


@pytest.fixture
def gallery_dir(enrolled: Enrolled, tmp_path: Path) -> Path:
    target = tmp_path / "gallery"
    shutil.copytree(enrolled.path, target)
    return target


def _assert_finds_everyone(g: EmbeddedGallery, probes: dict[str, Faceprint]) -> None:
    for person, fp in probes.items():
        (answer,) = g.identify([fp])
        assert answer.match is not None and answer.match.subject == person, (person, answer.to_dict())


def _staged(gallery_dir: Path) -> int:
    with sqlite3.connect(f"file:{gallery_dir / 'gallery.sqlite3'}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM migration_staging").fetchone()[0])


# -- the migration itself -----------------------------------------------------------------------------------
def test_migrating_to_arcface_switches_the_model_and_identify_finds_everyone(
    gallery_dir: Path, enrolled: Enrolled, registry: ModelRegistry
) -> None:
    other = EmbeddedGallery(gallery_dir, key=KEY)  # another client with the old model's index in memory
    _assert_finds_everyone(other, enrolled.probes_dlib)
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        report = migrate_collection(g, "default", TARGET, registry=registry, batch=8)
        assert (report.templates, report.subjects, report.resumed) == (enrolled.templates, enrolled.subjects, 0)
        assert report.source_model == SOURCE and not report.noop and report.seconds > 0
        assert report.coverage == {"dlib5-150-p0.25": pytest.approx(0.7608, abs=1e-3)}
        coll = g.get_collection()
        assert (coll.model_id, coll.dim) == (TARGET, 512)
        subjects = g.list_subjects(limit=100).items
        assert {t.model_id for s in subjects for t in g.list_templates(s.id)} == {TARGET}
        assert all(v.shape == (512,) for s in subjects for v in g.template_vectors(s.id).values())
        _assert_finds_everyone(g, enrolled.probes_mbf)
        (answer,) = g.identify([enrolled.probes_mbf["person02"]])
        # The new model's shipped calibration is used without being asked for.
        assert answer.threshold == pytest.approx(shipped_calibration(TARGET).threshold_for(DEFAULT_FMR))
        with pytest.raises(ContractMismatch):
            g.identify([enrolled.probes_dlib["person02"]])
        assert g.integrity_check() == [] and _staged(gallery_dir) == 0
    # The other client rebuilds its index instead of answering from the old vectors.
    _assert_finds_everyone(other, enrolled.probes_mbf)
    other.close()
    with EmbeddedGallery(gallery_dir, key=KEY) as again:  # and so does a fresh open (no stale snapshot)
        _assert_finds_everyone(again, enrolled.probes_mbf)


def test_migrated_templates_score_close_to_a_fresh_enrolment(
    gallery_dir: Path, enrolled: Enrolled, registry: ModelRegistry
) -> None:
    """Re-cut chips lack the forehead band a dlib chip never held; the cost in genuine score is small."""
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        migrate_collection(g, "default", TARGET, registry=registry)
        migrated = {person: np.stack(list(g.template_vectors(person).values())) for person in enrolled.fresh_mbf}
    genuine_gap = [
        cosine_scores(probe.vector, enrolled.fresh_mbf[person]).max()
        - cosine_scores(probe.vector, migrated[person]).max()
        for person, probe in enrolled.probes_mbf.items()
    ]
    assert np.mean(genuine_gap) < 0.05 and max(genuine_gap) < 0.1, genuine_gap
    # A migrated template is still closer to its own photo's fresh embedding than to anyone else's.
    for person, vectors in migrated.items():
        own = np.diag(cosine_scores(vectors, enrolled.fresh_mbf[person]))
        others = [cosine_scores(vectors, v).max() for p, v in enrolled.fresh_mbf.items() if p != person]
        assert own.min() > 0.85 and own.min() > max(others), (person, own, max(others))


def test_migrating_back_restores_the_original_vectors(gallery_dir: Path, registry: ModelRegistry) -> None:
    """The chip is kept as enrolled (with the template it was cut for), so nothing is resampled twice."""
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        before = {s.name: g.template_vectors(s.id) for s in g.list_subjects(limit=100).items}
        migrate_collection(g, "default", TARGET, registry=registry)
        report = migrate_collection(g, "default", SOURCE, registry=registry)
        assert report.coverage == {"dlib5-150-p0.25": 1.0} and not report.notes
        assert g.get_collection().model_id == SOURCE
        for name, vectors in before.items():
            after = g.template_vectors(name)
            assert after.keys() == vectors.keys()
            for tid, vec in vectors.items():
                assert float(vec @ after[tid]) > 0.99999, (name, tid)


def test_same_model_is_a_noop(gallery_dir: Path, registry: ModelRegistry) -> None:
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        generation = g._generation(1)
        plan = plan_migration(g, "default", SOURCE, registry=registry)
        report = run_migration(g, plan, registry=registry)
        assert plan.noop and report.noop and report.templates == 0
        assert g._generation(1) == generation and g.get_collection().model_id == SOURCE


# -- refusals ---------------------------------------------------------------------------------------------
def test_templates_without_chips_are_refused_with_their_count_then_dropped_on_request(
    gallery_dir: Path, enrolled: Enrolled, registry: ModelRegistry, pipeline: Pipeline
) -> None:
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        report = enrol_images(g, pipeline, "no chips", identity_photos("person01")[-3:-1], keep_chips=False)
        n = len(report.accepted)
        assert n >= 1, report.to_dict()
        with pytest.raises(MissingChips) as refused:
            plan_migration(g, "default", TARGET, registry=registry)
        message = str(refused.value)
        assert f"{n} of {enrolled.templates + n} template(s) have no stored chip" in message
        assert "'no chips'" in message and "re-enrol" in message.lower() and "--drop-missing" in message
        assert g.get_collection().model_id == SOURCE and _staged(gallery_dir) == 0

        done = migrate_collection(g, "default", TARGET, registry=registry, drop_missing=True)
        assert done.dropped_templates == n and done.templates == enrolled.templates
        assert any("without a chip will be deleted" in n for n in done.notes)
        assert g.get_subject("no chips").template_count == 0  # the subject and its consent record stay
        _assert_finds_everyone(g, enrolled.probes_mbf)


def test_cli_refuses_chipless_templates_and_reports_a_migration(
    gallery_dir: Path, enrolled: Enrolled, model_store: Path, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEPRINT_MODEL_DIR", str(model_store))
    monkeypatch.setenv("FACEPRINT_KEY", KEY.hex())
    cli = CliRunner()
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        g.add_subject("late")
        vector = next(iter(g.template_vectors("person01").values()))
        g.add_templates("late", [Faceprint(vector, SOURCE)])  # no chip
    base = ["migrate", "--gallery", str(gallery_dir), "--to", TARGET]
    r = cli.invoke(app, base)
    assert r.exit_code == 2 and "1 of" in r.stderr and "--drop-missing" in r.stderr, r.output
    r = cli.invoke(app, [*base, "--drop-missing", "--batch", "5", "--json"])
    assert r.exit_code == 0, r.output
    (summary,) = json.loads(r.stdout)
    assert summary["migrated"] and summary["to"] == TARGET and summary["from"] == SOURCE
    assert summary["templates"] == enrolled.templates and summary["dropped_templates"] == 1
    assert "filled black" in r.stderr  # the plan's notes come first, on stderr
    r = cli.invoke(app, base)
    assert r.exit_code == 0 and "already uses faceplugin-mbf; nothing to do" in r.stdout, r.output
    r = cli.invoke(app, ["gallery", "--gallery", str(gallery_dir), "stats", "--json"])
    assert json.loads(r.stdout)[0]["model_id"] == TARGET


def test_unknown_model_and_non_embedders_are_refused(gallery_dir: Path, registry: ModelRegistry) -> None:
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        with pytest.raises(ModelError, match=r"unknown model 'no-such-model'.*faceplugin-mbf"):
            plan_migration(g, "default", "no-such-model", registry=registry)
        with pytest.raises(ModelError, match="is a detector, not an embedder"):
            plan_migration(g, "default", "dlib-mmod", registry=registry)
        with pytest.raises(ModelError, match="is not installed: run `faceprint models install faceplugin`"):
            plan_migration(g, "default", TARGET, registry=ModelRegistry(ModelStore(gallery_dir / "empty-store")))


def test_milvus_keeps_no_chips_so_it_cannot_migrate(tmp_path: Path, registry: ModelRegistry) -> None:
    pytest.importorskip("milvus_lite")
    from faceprint.gallery.milvus import MilvusGallery

    with MilvusGallery(str(tmp_path / "g.db"), key=KEY) as g:
        g.ensure_collection("default", SOURCE, 128)
        with pytest.raises(MigrationUnsupported, match="keeps no face chips"):
            plan_migration(g, "default", TARGET, registry=registry)


# -- interruptions --------------------------------------------------------------------------------------------
def test_a_corrupted_chip_stops_the_migration_and_the_old_model_keeps_serving(
    gallery_dir: Path, enrolled: Enrolled, registry: ModelRegistry
) -> None:
    with sqlite3.connect(gallery_dir / "gallery.sqlite3") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM templates ORDER BY id")]
        # Half-way through (person06 has three templates, so deleting this one leaves them findable).
        bad = conn.execute(
            "SELECT MIN(t.id) FROM templates t JOIN subjects s ON s.id = t.subject_id WHERE s.name = 'person06'"
        ).fetchone()[0]
        # One flipped byte in the ciphertext: what a damaged disk sector or tampering leaves.
        chip = bytearray(conn.execute("SELECT chip FROM templates WHERE id = ?", (bad,)).fetchone()[0])
        chip[len(chip) // 2] ^= 0xFF
        conn.execute("UPDATE templates SET chip = ? WHERE id = ?", (bytes(chip), bad))
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        with pytest.raises(GalleryCorrupt, match=f"template {bad} .*--template {bad}"):
            migrate_collection(g, "default", TARGET, registry=registry, batch=4)
        staged = _staged(gallery_dir)
        assert 0 < staged < len(ids)
        assert g.get_collection().model_id == SOURCE and g.integrity_check() == []
        _assert_finds_everyone(g, enrolled.probes_dlib)

        g.delete_template(bad)
        report = migrate_collection(g, "default", TARGET, registry=registry, batch=4)
        assert report.resumed == staged and report.templates == len(ids) - 1
        _assert_finds_everyone(g, enrolled.probes_mbf)


def test_sigkill_during_the_migration_leaves_the_old_gallery_working_and_a_rerun_finishes(
    gallery_dir: Path, enrolled: Enrolled, model_store: Path, registry: ModelRegistry
) -> None:
    env = {**os.environ, "FACEPRINT_MODEL_DIR": str(model_store), "FACEPRINT_KEY": KEY.hex()}
    cmd = [sys.executable, "-c", "from faceprint.cli import app; app()", "migrate", "--gallery", str(gallery_dir),
           "--to", TARGET, "--batch", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _staged(gallery_dir) >= 1:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"migrate was not killed mid-run (exit {proc.returncode}): {err!r}"
    staged = _staged(gallery_dir)
    assert 1 <= staged < enrolled.templates
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        assert g.integrity_check() == []
        assert g.get_collection().model_id == SOURCE and g.get_collection().dim == 128
        _assert_finds_everyone(g, enrolled.probes_dlib)
        report = migrate_collection(g, "default", TARGET, registry=registry)
        assert report.resumed == staged and report.templates == enrolled.templates
        _assert_finds_everyone(g, enrolled.probes_mbf)


# -- re-cutting chips -------------------------------------------------------------------------------------------
def test_a_recut_dlib_chip_matches_the_arcface_chip_cut_from_the_photo(pipeline: Pipeline) -> None:
    img = load_image(identity_photos("person03")[0])
    (face,) = [max(pipeline.detect(img), key=lambda d: d.area)]
    dlib_chip = pipeline.chips(img, [face])
    arcface = extract_chips(img.pixels, [face.landmarks], chip_template("arcface-112", face.landmark_scheme))[0]
    recut = reframe_chips(dlib_chip, "dlib5-150-p0.25", "arcface-112")[0]
    covered = recut.max(axis=2) > 0  # the black band is what the dlib chip never held
    assert abs(covered.mean() - reframe_coverage("dlib5-150-p0.25", "arcface-112")) < 0.03
    diff = np.abs(recut.astype(int) - arcface.astype(int))[covered]
    assert diff.mean() < 6, diff.mean()
    assert reframe_chips(dlib_chip, "dlib5-150-p0.25", "dlib5-150-p0.25") is dlib_chip


# -- a copy for a canary --------------------------------------------------------------------------------------
def test_a_copy_migrated_to_another_model_leaves_the_source_serving(
    gallery_dir: Path, enrolled: Enrolled, registry: ModelRegistry
) -> None:
    """`faceprint canary copy`: the collection copied with its chips, the copy migrated; the source is untouched."""
    copy = f"default@{TARGET}"
    with EmbeddedGallery(gallery_dir, key=KEY) as g:
        g.update_subject("person01", metadata={"badge": "17"})
        policy = g.set_collection_policy("default", retention=timedelta(days=365), purposes=("access-control",))
        made = copy_collection(g, "default", copy)
        assert g.collection_policy(copy) == policy  # the copy protects people as the source does
        assert (made.subjects, made.templates, made.without_chip) == (enrolled.subjects, enrolled.templates, 0)
        with pytest.raises(GalleryError, match="exists already"):
            copy_collection(g, "default", copy)
        report = migrate_collection(g, copy, TARGET, registry=registry)
        assert (report.templates, report.source_model) == (enrolled.templates, SOURCE)
        assert g.get_collection("default").model_id == SOURCE and g.get_collection(copy).model_id == TARGET
        assert g.get_subject("person01", collection=copy).metadata == {"badge": "17"}
        _assert_finds_everyone(g, enrolled.probes_dlib)
        for person, fp in enrolled.probes_mbf.items():
            (answer,) = g.identify([fp], collection=copy)
            assert answer.match is not None and answer.match.subject == person, (person, answer.to_dict())
