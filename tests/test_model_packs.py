"""Model packs end to end: the faceplugin pack installed with npm, the ArcFace path on the shared photos,
and the checks that refuse a wrong file or a spec that does not fit its model.

CI machines have npm; when it is missing this module fails (not skips) and says so, because the ArcFace path
would otherwise go untested.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faceprint.cli import app
from faceprint.errors import ModelError
from faceprint.factory import add_model
from faceprint.gallery import EmbeddedGallery, enrol_images
from faceprint.image import load_image
from faceprint.matching import cosine_scores, fmr_for_fpir
from faceprint.models.install import install_pack
from faceprint.models.registry import ModelRegistry
from faceprint.models.store import ModelStore
from faceprint.pipeline import Pipeline, PipelineConfig
from tests.conftest import GROUPS, IDENTITIES, identity_photos

KEY_HEX = "42" * 32
PACK_FILES = {"fr_feature.onnx", "fr_landmark.onnx", "fr_detect.onnx", "fr_liveness.onnx"}


@dataclass(frozen=True)
class Installed:
    store: Path
    output: str


@pytest.fixture(scope="module")
def installed(faceplugin_install: tuple[Path, str], cache_dir: Path) -> Installed:
    """`faceprint models install faceplugin` into a fresh model store, exactly as a user runs it."""
    return Installed(*faceplugin_install)


@pytest.fixture(scope="module")
def mbf(installed: Installed) -> Pipeline:
    return Pipeline(PipelineConfig(embedder="faceplugin-mbf", model_dir=installed.store))


def test_install_keeps_only_the_sha256_checked_onnx_files(installed: Installed) -> None:
    files = {p.name for p in (installed.store / "files").rglob("*") if p.is_file()}
    assert files == PACK_FILES
    registry = ModelRegistry(ModelStore(installed.store))
    for model_id in ("faceplugin-mbf", "faceplugin-landmark68", "faceplugin-ultraface", "faceplugin-liveness"):
        assert registry.status(registry.get(model_id)).available
        registry.path(model_id)  # verifies the sha256 again


def test_arcface_path_separates_the_shared_identities(mbf: Pipeline, pipeline: Pipeline) -> None:
    assert mbf.landmarker_id == "faceplugin-landmark68" and mbf.template.name == "arcface-112"
    vectors, labels = [], []
    for person in sorted(p.name for p in IDENTITIES.iterdir()):
        for path in identity_photos(person):
            img = load_image(path)
            faces = mbf.detect(img)
            assert faces and faces[0].landmark_scheme == "arcface5"
            largest = max(faces, key=lambda d: d.area)
            (fp,) = mbf.embed(img, [largest])
            assert fp.model_id == "faceplugin-mbf" and fp.vector.shape == (512,)
            vectors.append(fp.vector)
            labels.append(person)
    scores = cosine_scores(np.array(vectors), np.array(vectors))
    same = np.array(labels)[:, None] == np.array(labels)[None, :]
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    genuine, impostor = scores[same & upper], scores[~same & upper]
    assert np.isclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5).all()
    # 36 photos, 9 people: every genuine pair scores above every impostor pair.
    assert genuine.min() > impostor.max(), (genuine.min(), impostor.max())


def test_dlib_landmarks_give_the_arcface_chip_too(installed: Installed) -> None:
    via_dlib = Pipeline(
        PipelineConfig(embedder="faceplugin-mbf", landmarks="dlib-shape5", model_dir=installed.store, detector="mmod")
    )
    via_68 = Pipeline(PipelineConfig(embedder="faceplugin-mbf", model_dir=installed.store))
    a, b = identity_photos("person01")[:2]
    other = identity_photos("person02")[0]
    prints = {name: [p.largest_face(load_image(x))[0].vector for x in (a, b, other)] for name, p in
              (("dlib5", via_dlib), ("68", via_68))}  # fmt: skip
    for vecs in prints.values():
        s = cosine_scores(np.array(vecs), np.array(vecs))
        assert s[0, 1] > s[0, 2] + 0.2 and s[0, 1] > s[1, 2] + 0.2
    # The two alignments put the same face in nearly the same chip.
    assert cosine_scores(prints["dlib5"][0], prints["68"][0])[0, 0] > 0.8


def test_cli_use_makes_verify_enrol_and_identify_use_the_arcface_model(
    installed: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEPRINT_MODEL_DIR", str(installed.store))
    monkeypatch.setenv("FACEPRINT_KEY", KEY_HEX)
    cli = CliRunner()
    r = cli.invoke(app, ["models", "use", "faceplugin-mbf"])
    assert r.exit_code == 0, r.output
    listing = json.loads(cli.invoke(app, ["models", "list", "--json"]).stdout)
    assert {row["id"] for row in listing if row["default"] and row["task"] == "embedder"} == {"faceplugin-mbf"}
    a, b = identity_photos("person01")[:2]
    r = cli.invoke(app, ["verify", str(a), str(b), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["model"] == "faceplugin-mbf" and data["same_person"] is True
    r = cli.invoke(app, ["verify", str(a), str(identity_photos("person02")[0]), "--json"])
    assert json.loads(r.stdout)["same_person"] is False

    gallery = tmp_path / "g"
    for person in ("person01", "person02", "person03"):
        photos = [str(p) for p in identity_photos(person)[:2]]
        r = cli.invoke(app, ["enroll", "--gallery", str(gallery), "--subject", person, *photos, "--json"])
        assert r.exit_code == 0, r.output
    stats = json.loads(cli.invoke(app, ["gallery", "--gallery", str(gallery), "stats", "--json"]).stdout)
    assert stats[0]["model_id"] == "faceplugin-mbf" and stats[0]["dim"] == 512
    probe = identity_photos("person02")[-1]
    r = cli.invoke(app, ["identify", "--gallery", str(gallery), str(probe), "--fpir", "0.01", "--json"])
    assert r.exit_code == 0, r.output
    face = json.loads(r.stdout)["faces"][0]
    assert face["match"] == "person02"
    assert face["fpir"] == 0.01 and face["fmr"] == pytest.approx(fmr_for_fpir(0.01, 3))

    # The collection keeps its contract: switching the default back does not change what searches it.
    assert cli.invoke(app, ["models", "use", "dlib-resnet-v1"]).exit_code == 0
    r = cli.invoke(app, ["identify", "--gallery", str(gallery), str(probe), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["faces"][0]["match"] == "person02"
    r = cli.invoke(app, ["identify", "--gallery", str(gallery), str(probe), "--model", "dlib-resnet-v1"])
    assert r.exit_code == 2 and "made with faceplugin-mbf" in r.output


def test_fpir_threshold_grows_with_the_gallery(mbf: Pipeline, tmp_path: Path) -> None:
    with EmbeddedGallery(tmp_path / "g", key=bytes.fromhex(KEY_HEX)) as g:
        enrol_images(g, mbf, "person01", identity_photos("person01")[:2])
        probe = mbf.largest_face(load_image(identity_photos("person01")[-1]))[0]
        one = g.identify([probe], fpir=0.01)[0]
        for person in ("person02", "person03", "person04", "person05"):
            # person04's img59 also shows a second, cut-off person at its left edge: enrolment rejects it as
            # ambiguous (or not, as box sizes jitter by a pyramid step), so it is not used here
            photos = [p for p in identity_photos(person) if p.name != "img59.jpg"]
            assert enrol_images(g, mbf, person, photos[:1]).accepted
        five = g.identify([probe], fpir=0.01)[0]
    assert one.fmr == pytest.approx(0.01) and five.fmr == pytest.approx(fmr_for_fpir(0.01, 5))
    assert five.threshold >= one.threshold
    assert five.match is not None and five.match.subject == "person01"


def test_fmr_for_fpir() -> None:
    assert fmr_for_fpir(0.01, 1) == pytest.approx(0.01)
    assert fmr_for_fpir(0.01, 1000) == pytest.approx(0.01 / 1000, rel=0.01)
    assert 1 - (1 - fmr_for_fpir(0.1, 50)) ** 50 == pytest.approx(0.1)


def test_a_file_that_does_not_match_its_sha256_is_refused(installed: Installed, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    registry = ModelRegistry(store)
    good = installed.store / "files" / "faceplugin-mbf" / "fr_feature.onnx"
    bad = tmp_path / "fr_feature.onnx"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="no known model has sha256"):
        add_model(registry, bad)
    # A file corrupted inside the store is refused at load, not used.
    assert add_model(registry, good).spec.id == "faceplugin-mbf"
    store.file_path(registry.get("faceplugin-mbf")).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="refusing to load it"):
        registry.path("faceplugin-mbf")
    with pytest.raises(ModelError, match="refusing to load it"):
        Pipeline(PipelineConfig(embedder="faceplugin-mbf", model_dir=store.root)).embedder  # noqa: B018
    # A pack tarball that is not the pinned one is refused before anything is extracted.
    fake = tmp_path / "fake.tgz"
    fake.write_bytes(b"not the faceplugin tarball")
    with pytest.raises(ModelError, match="refusing to install it"):
        install_pack(registry, "faceplugin", tarball=fake)


SPEC = """
id = "my-arcface"
task = "embedder"
family = "arcface"
licence = "MIT"
provenance = "test: fr_feature.onnx under another spec"

[file]
name = "fr_feature.onnx"
sha256 = "{sha}"

[source]
kind = "user"
path = "fr_feature.onnx"

[input]
width = {size}
height = {size}
colour = "RGB"
mean = [127.0]
std = [128.0]

[output]
dim = 512

[align]
template = "arcface-{size}"
"""


def test_a_spec_with_a_wrong_input_size_fails_clearly_at_load(installed: Installed, tmp_path: Path) -> None:
    registry = ModelRegistry(ModelStore(tmp_path / "store"))
    shutil.copy(installed.store / "files" / "faceplugin-mbf" / "fr_feature.onnx", tmp_path / "fr_feature.onnx")
    sha = registry.get("faceplugin-mbf").sha256
    (tmp_path / "bad.toml").write_text(SPEC.format(sha=sha, size=128))
    with pytest.raises(ModelError, match=r"input is 3×128×128 .* expects 1×3×112×112"):
        add_model(registry, tmp_path / "bad.toml")
    assert "my-arcface" not in registry.specs()
    r = CliRunner().invoke(app, ["models", "add", str(tmp_path / "bad.toml")],
                           env={"FACEPRINT_MODEL_DIR": str(tmp_path / "store")})  # fmt: skip
    assert r.exit_code == 2 and "fix [input]" in r.output
    # The same file under a correct spec is a new, usable embedder: a spec, not code.
    (tmp_path / "good.toml").write_text(SPEC.format(sha=sha, size=112))
    added = add_model(registry, tmp_path / "good.toml")
    assert added.spec.id == "my-arcface" and registry.get("my-arcface").source.kind == "user"
    pipe = Pipeline(PipelineConfig(embedder="my-arcface", landmarks="dlib-shape5", model_dir=registry.store.root))
    chips = np.zeros((2, 112, 112, 3), dtype=np.uint8)
    assert pipe.embedder.embed_chips(chips).shape == (2, 512)


def test_ultraface_detector_finds_the_group(installed: Installed) -> None:
    pipe = Pipeline(
        PipelineConfig(detector="faceplugin-ultraface", embedder="faceplugin-mbf", model_dir=installed.store)
    )
    faces = pipe.detect(load_image(GROUPS / "couple.jpg"))
    assert len(faces) == 2 and all(f.score >= 0.65 for f in faces)


def test_every_models_command_and_shipped_model_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    for command in (
        "faceprint models list",
        "faceprint models install",
        "faceprint models add",
        "faceprint models use",
    ):
        assert command in doc, command
    for model_id in ModelRegistry(ModelStore(Path("/nonexistent"))).specs():
        assert f"`{model_id}`" in doc, f"{model_id} is not in docs/models.md"
