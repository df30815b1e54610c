"""The gallery contract: every backend (embedded, PostgreSQL, Milvus) must pass these tests unchanged.

To run it on a backend, subclass :class:`GalleryContract` in a ``test_*.py`` module and provide the
``open_store`` fixture: a zero-argument callable that opens *the same* store each time it is called (a
second call models a reopen or a second client). Everything else here goes through the
:class:`faceprint.gallery.Gallery` protocol only.

Vectors are synthetic but shaped like faceprints: each person is a random unit "identity" vector and each
template a noisy copy of it (cosine ≈ 0.9 to the identity, ≈ 0.8 between two templates of one person,
≈ 0 ± 0.09 between people), so the open-set threshold used here (0.5) separates them cleanly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faceprint.cli import app
from faceprint.errors import FaceprintError
from faceprint.gallery import (
    UNSET,
    CollectionNotFound,
    Consent,
    ContractMismatch,
    Gallery,
    SubjectExists,
    SubjectNotFound,
    TemplateNotFound,
    export_gallery,
    import_gallery,
    open_gallery,
)
from faceprint.gallery.crypto import TemplateCipher
from faceprint.gallery.errors import GalleryKeyError, UnknownPurpose, WrongKey
from faceprint.gallery.model import parse_duration
from faceprint.matching import DEFAULT_FMR, Calibration, InvalidThresholdRule, fmr_for_fpir, shipped_calibration
from faceprint.types import Detection, Faceprint
from tests.conftest import identity_photos

MODEL = "test-model-v1"
DIM = 128
THRESHOLD = 0.5
EXPORT_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
#: Rotates the gallery at argv[1] from key argv[2] to argv[3] in batches of 2, SIGKILLing itself when the
#: rotation reaches phase argv[4] with at least argv[5] values re-encrypted.
ROTATE_SCRIPT = """
import os, signal, sys
from faceprint.gallery import open_gallery
where, old, new, phase, at = sys.argv[1:]
def progress(p, n):
    if p == phase and n >= int(at):
        os.kill(os.getpid(), signal.SIGKILL)
g = open_gallery(where, key=bytes.fromhex(old))
g.rotate_key(bytes.fromhex(new), batch=2, progress=progress)
g.close()
"""

OpenStore = Callable[[], Gallery]


def check_cli_identify_with_fpir(gallery: str, key: bytes, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """`faceprint enroll` then `faceprint identify --fpir` on ``gallery`` (any backend), with real photos: the
    answer states the rule (FPIR and the per-comparison FMR it became for the gallery's one subject)."""
    monkeypatch.setenv("FACEPRINT_KEY", key.hex())
    monkeypatch.setenv("FACEPRINT_HOME", str(home))
    cli = CliRunner()
    photos = identity_photos("person01")
    hog = ["--detector", "hog"]
    r = cli.invoke(app, ["enroll", "--gallery", gallery, "--subject", "person01", *map(str, photos[:2]), *hog])
    assert r.exit_code == 0, r.output
    probe = ["identify", "--gallery", gallery, str(photos[2]), *hog]
    r = cli.invoke(app, [*probe, "--fpir", "0.01"])
    assert r.exit_code == 0, r.output
    assert ": person01 (threshold " in r.stdout and ", FPIR 0.01 (FMR 1.0e-02 per comparison); " in r.stdout
    r = cli.invoke(app, [*probe, "--fpir", "0.01", "--json"])
    assert r.exit_code == 0, r.output
    (face,) = json.loads(r.stdout)["faces"]
    assert face["match"] == "person01" and face["fpir"] == 0.01 and face["fmr"] == pytest.approx(0.01)
    assert face["threshold"] == pytest.approx(
        shipped_calibration("dlib-resnet-v1").threshold_for(face["fmr"]), abs=1e-6
    )
    r = cli.invoke(app, [*probe, "--fpir", "0.01", "--fmr", "1e-3"])
    assert r.exit_code == 2 and "at most one of fmr, fpir and threshold" in r.stderr, r.output


class People:
    """Deterministic synthetic identities and their faceprints."""

    def __init__(self, seed: int = 7, dim: int = DIM) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self._centres: dict[str, np.ndarray] = {}

    def centre(self, name: str) -> np.ndarray:
        if name not in self._centres:
            v = self.rng.standard_normal(self.dim).astype(np.float32)
            self._centres[name] = v / np.linalg.norm(v)
        return self._centres[name]

    def print_of(
        self, name: str, *, model: str = MODEL, box: tuple[float, float, float, float] | None = None
    ) -> Faceprint:
        noise = self.rng.standard_normal(self.dim).astype(np.float32) * (0.48 / np.sqrt(self.dim))
        v = self.centre(name) + noise
        det = None if box is None else Detection(box=box, score=1.0)
        return Faceprint(v / np.linalg.norm(v), model, det, 0.9)

    def prints_of(self, name: str, n: int) -> list[Faceprint]:
        return [self.print_of(name) for _ in range(n)]

    def stranger(self) -> Faceprint:
        v = self.rng.standard_normal(self.dim).astype(np.float32)
        return Faceprint(v / np.linalg.norm(v), MODEL, None, 0.9)


class GalleryContract:
    """Backend-agnostic behaviour of a gallery. Subclasses provide the ``open_store`` fixture."""

    @pytest.fixture
    def open_store(self, tmp_path: Path) -> OpenStore:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def location(self) -> tuple[str, bytes]:  # pragma: no cover - overridden
        """Where ``open_store``'s store is, for ``open_gallery`` in another process, and its key."""
        raise NotImplementedError

    def release(self, where: str) -> None:
        """Let another process open the store at ``where`` once this one closed it (Milvus Lite keeps its
        embedded server, and the directory's lock, until told)."""

    @pytest.fixture
    def gallery(self, open_store: OpenStore) -> Iterator[Gallery]:
        g = open_store()
        g.ensure_collection("default", MODEL, DIM)
        yield g
        g.close()

    @pytest.fixture
    def people(self) -> People:
        return People()

    def enrol(self, gallery: Gallery, people: People, name: str, n: int = 3, collection: str = "default") -> str:
        subject = gallery.add_subject(name, collection=collection)
        gallery.add_templates(subject.id, people.prints_of(name, n), collection=collection)
        return subject.id

    # -- collections and the embedding contract --------------------------------------------------------
    def test_collection_is_pinned_to_one_model(self, gallery: Gallery, people: People) -> None:
        assert gallery.ensure_collection("default", MODEL, DIM).model_id == MODEL
        with pytest.raises(ContractMismatch):
            gallery.ensure_collection("default", "other-model", DIM)
        with pytest.raises(ContractMismatch):
            gallery.ensure_collection("default", MODEL, 512)
        sid = self.enrol(gallery, people, "ada")
        with pytest.raises(ContractMismatch):
            gallery.add_templates(sid, [people.print_of("ada", model="other-model")])
        with pytest.raises(ContractMismatch):
            gallery.identify([people.print_of("ada", model="other-model")], threshold=THRESHOLD)
        with pytest.raises(ContractMismatch):
            gallery.add_negative(Faceprint(np.ones(64, np.float32) / 8, MODEL), sid)

    def test_collections_are_separate(self, gallery: Gallery, people: People) -> None:
        gallery.ensure_collection("staff", MODEL, DIM)
        self.enrol(gallery, people, "ada", collection="default")
        self.enrol(gallery, people, "ada", collection="staff")  # same name, another collection: fine
        self.enrol(gallery, people, "bob", collection="staff")
        assert {c.name for c in gallery.list_collections()} == {"default", "staff"}
        (ans,) = gallery.identify([people.print_of("bob")], threshold=THRESHOLD)
        assert ans.match is None  # bob is only in "staff"
        (ans,) = gallery.identify([people.print_of("bob")], collection="staff", threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "bob"
        with pytest.raises(CollectionNotFound):
            gallery.identify([people.print_of("bob")], collection="nope", threshold=THRESHOLD)
        with pytest.raises(CollectionNotFound):
            gallery.add_subject("x", collection="nope")

    # -- subjects ---------------------------------------------------------------------------------------
    def test_subject_round_trip(self, gallery: Gallery) -> None:
        consent = Consent("ada herself", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), ("access-control",))
        expires = datetime(2030, 1, 1, tzinfo=UTC)
        created = gallery.add_subject(
            "Ada Lovelace", metadata={"team": "R&D", "badge": 42}, consent=consent, expires_at=expires
        )
        for ref in (created.id, "Ada Lovelace"):
            got = gallery.get_subject(ref)
            assert got.id == created.id
            assert got.name == "Ada Lovelace"
            assert got.metadata == {"team": "R&D", "badge": 42}
            assert got.consent == consent
            assert got.expires_at == expires
            assert got.template_count == 0
        with pytest.raises(SubjectExists):
            gallery.add_subject("Ada Lovelace")
        with pytest.raises(SubjectNotFound):
            gallery.get_subject("nobody")
        assert gallery.find_subject("nobody") is None

    def test_update_subject(self, gallery: Gallery) -> None:
        s = gallery.add_subject("ada", metadata={"a": 1})
        gallery.add_subject("bob")
        u = gallery.update_subject(s.id, name="ada l.", metadata={"b": 2})
        assert (u.id, u.name, u.metadata) == (s.id, "ada l.", {"b": 2})
        u = gallery.update_subject("ada l.", consent=Consent("ada", datetime(2026, 1, 1, tzinfo=UTC), ("attendance",)))
        assert u.consent is not None and u.consent.purposes == ("attendance",)
        u = gallery.update_subject(s.id, consent=None, expires_at=datetime(2031, 1, 1, tzinfo=UTC), name=UNSET)
        assert u.consent is None and u.expires_at is not None and u.name == "ada l."
        with pytest.raises(SubjectExists):
            gallery.update_subject(s.id, name="bob")
        with pytest.raises(SubjectNotFound):
            gallery.update_subject("ghost", name="x")

    def test_list_is_paged_and_complete(self, gallery: Gallery) -> None:
        names = [f"person{i:03d}" for i in range(23)]
        for name in reversed(names):
            gallery.add_subject(name)
        seen: list[str] = []
        cursor = None
        while True:
            page = gallery.list_subjects(limit=5, cursor=cursor)
            assert page.total == 23
            assert len(page.items) <= 5
            seen += [s.name for s in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == names

    def test_delete_subject_removes_it_from_search(self, gallery: Gallery, people: People) -> None:
        sid = self.enrol(gallery, people, "ada", 3)
        self.enrol(gallery, people, "bob", 3)
        probe = people.print_of("ada")
        (before,) = gallery.identify([probe], threshold=THRESHOLD)
        assert before.match is not None and before.match.subject_id == sid
        gallery.delete_subject("ada")
        (after,) = gallery.identify([probe], threshold=THRESHOLD)
        assert after.match is None
        assert all(c.subject_id != sid for c in after.candidates)
        with pytest.raises(SubjectNotFound):
            gallery.get_subject(sid)
        with pytest.raises(SubjectNotFound):
            gallery.delete_subject(sid)
        assert gallery.stats().templates == 3

    def test_purge_expired(self, gallery: Gallery, people: People) -> None:
        now = datetime.now(UTC)
        old = gallery.add_subject("old", expires_at=now - timedelta(days=1))
        gallery.add_templates(old.id, people.prints_of("old", 2))
        gallery.add_subject("current", expires_at=now + timedelta(days=1))
        gallery.add_subject("forever")
        purged = gallery.purge_expired(now=now)
        assert [s.name for s in purged] == ["old"]
        assert {s.name for s in gallery.list_subjects().items} == {"current", "forever"}
        (ans,) = gallery.identify([people.print_of("old")], threshold=THRESHOLD)
        assert ans.candidates == () or all(c.subject != "old" for c in ans.candidates)
        assert [s.name for s in gallery.purge_expired(now=now + timedelta(days=2))] == ["current"]

    # -- protection: retention, consent purposes, erasure (issue 18) ------------------------------------
    def test_an_expired_subject_is_never_matched(self, gallery: Gallery, people: People) -> None:
        now = datetime.now(UTC)
        soon = gallery.add_subject("soon", expires_at=now + timedelta(seconds=2))
        gallery.add_templates(soon.id, people.prints_of("soon", 3))
        past = gallery.add_subject("past", expires_at=now - timedelta(seconds=1))
        gallery.add_templates(past.id, people.prints_of("past", 3))
        self.enrol(gallery, people, "kept", 3)
        (ans,) = gallery.identify([people.print_of("soon")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "soon"
        (ans,) = gallery.identify([people.print_of("past")], threshold=THRESHOLD)  # not purged, yet never found
        assert ans.match is None and all(c.subject != "past" for c in ans.candidates)
        while datetime.now(UTC) <= soon.expires_at:  # type: ignore[operator]
            time.sleep(0.1)
        (ans,) = gallery.identify([people.print_of("soon")], threshold=THRESHOLD)
        assert ans.match is None and all(c.subject != "soon" for c in ans.candidates)
        (ans,) = gallery.identify([people.print_of("kept")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "kept"
        assert {s.name for s in gallery.purge_expired()} == {"soon", "past"}

    def test_collection_retention_is_inherited_and_reported(self, gallery: Gallery) -> None:
        assert gallery.collection_policy().retention is None
        policy = gallery.set_collection_policy(retention=parse_duration("20d"))
        assert policy.retention == timedelta(days=20) and gallery.collection_policy().retention == policy.retention
        before = datetime.now(UTC)
        inherits = gallery.add_subject("inherits")
        assert inherits.expires_at is not None
        assert before + timedelta(days=20) <= inherits.expires_at <= datetime.now(UTC) + timedelta(days=20)
        own = gallery.add_subject("own", expires_at=before + timedelta(days=3))
        assert own.expires_at == before + timedelta(days=3)
        gallery.set_collection_policy(retention=None)
        assert gallery.add_subject("forever").expires_at is None
        stats = gallery.stats()
        assert (stats.expiring_7d, stats.expiring_30d) == (1, 2)
        with pytest.raises(FaceprintError, match="invalid retention '0d'"):
            parse_duration("0d")
        with pytest.raises(FaceprintError, match="invalid retention '1 year'"):
            parse_duration("1 year")

    def consenting(self, gallery: Gallery, people: People, name: str, purposes: tuple[str, ...] | None) -> str:
        consent = None if purposes is None else Consent(name, datetime.now(UTC), purposes)
        subject = gallery.add_subject(name, consent=consent)
        gallery.add_templates(subject.id, people.prints_of(name, 3))
        return subject.id

    def test_purpose_bound_search_sees_only_consenting_subjects(self, gallery: Gallery, people: People) -> None:
        self.consenting(gallery, people, "door", ("access-control",))
        self.consenting(gallery, people, "both", ("access-control", "attendance"))
        self.consenting(gallery, people, "none", None)
        probes = {name: people.print_of(name) for name in ("door", "both", "none")}

        def matched(purpose: str | None) -> dict[str, str | None]:
            answers = gallery.identify(list(probes.values()), threshold=THRESHOLD, purpose=purpose, one_to_one=False)
            return {name: a.match.subject if a.match else None for name, a in zip(probes, answers, strict=True)}

        assert matched(None) == {"door": "door", "both": "both", "none": "none"}
        assert matched("access-control") == {"door": "door", "both": "both", "none": None}
        assert matched("attendance") == {"door": None, "both": "both", "none": None}
        with pytest.raises(UnknownPurpose, match=r"unknown purpose 'marketing'.*access-control, attendance"):
            gallery.identify([probes["door"]], threshold=THRESHOLD, purpose="marketing")
        with pytest.raises(UnknownPurpose, match="unknown purpose 'payroll'"):
            gallery.add_subject("x", consent=Consent("x", datetime.now(UTC), ("payroll",)))
        with pytest.raises(UnknownPurpose, match="lower-case words"):
            gallery.set_collection_policy(purposes=["Access Control"])
        gallery.set_collection_policy(purposes=["access-control", "attendance", "payroll"])
        assert matched("payroll") == {"door": None, "both": None, "none": None}

    def test_consent_withdrawal_takes_effect_at_once(self, gallery: Gallery, people: People) -> None:
        sid = self.consenting(gallery, people, "ada", ("access-control",))
        self.consenting(gallery, people, "bob", None)
        subject, erased = gallery.withdraw_consent("ada")
        assert subject.consent is not None and subject.consent.withdrawn_at is not None and erased == []
        assert subject.consent.purposes == ("access-control",)  # the record says what was withdrawn
        for purpose in (None, "access-control"):
            (ans,) = gallery.identify([people.print_of("ada")], threshold=THRESHOLD, purpose=purpose)
            assert ans.match is None and all(c.subject_id != sid for c in ans.candidates)
        subject, erased = gallery.withdraw_consent("bob", delete_templates=True)  # no record before: one now
        assert subject.template_count == 0 and [e.templates for e in erased] == [1, 1, 1]
        assert all(e.subject == "bob" and e.collection == "default" for e in erased)
        assert gallery.get_subject("bob").consent.withdrawn_at is not None  # type: ignore[union-attr]

    def test_consent_required_collection(self, gallery: Gallery, people: People) -> None:
        self.consenting(gallery, people, "given", ("attendance",))
        self.consenting(gallery, people, "none", None)
        assert gallery.set_collection_policy(consent_required=True).consent_required
        (given, none) = gallery.identify(
            [people.print_of("given"), people.print_of("none")], threshold=THRESHOLD, one_to_one=False
        )
        assert given.match is not None and given.match.subject == "given" and none.match is None
        assert gallery.collection_policy().consent_required

    def test_erasure_says_what_was_deleted(self, gallery: Gallery, people: People) -> None:
        sid = self.consenting(gallery, people, "ada", ("attendance",))
        gallery.add_negative(people.stranger(), "ada")
        tids = [t.id for t in gallery.list_templates(sid)]
        one = gallery.delete_template(tids[0])
        assert (one.subject_id, one.subject, one.collection, one.templates, one.template_ids) == (
            sid, "ada", "default", 1, (tids[0],)
        )  # fmt: skip
        erasure = gallery.delete_subject("ada")
        assert (erasure.subject_id, erasure.subject, erasure.collection) == (sid, "ada", "default")
        assert (erasure.templates, erasure.negatives, erasure.consent_record) == (2, 1, True)
        assert erasure.template_ids == tuple(tids[1:]) and erasure.index_entries >= 2
        assert json.loads(json.dumps(erasure.to_dict()))["deleted"]["templates"] == 2

    # -- key rotation (issue 18) -----------------------------------------------------------------------
    def rotation_fixture(self, gallery: Gallery, people: People) -> dict[str, dict[int, np.ndarray]]:
        chips = getattr(gallery, "keeps_chips", False)
        for name in ("ada", "bob", "cyd"):
            s = gallery.add_subject(name)
            prints = people.prints_of(name, 3)
            extra = {"chips": [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(3)]} if chips else {}
            gallery.add_templates(s.id, prints, **extra)  # type: ignore[arg-type]
        gallery.add_negative(people.stranger(), "bob")
        return {name: gallery.template_vectors(name) for name in ("ada", "bob", "cyd")}

    def assert_readable(self, g: Gallery, people: People, vectors: dict[str, dict[int, np.ndarray]]) -> None:
        for name, before in vectors.items():
            after = g.template_vectors(name)
            assert after.keys() == before.keys()
            for tid, vec in before.items():
                np.testing.assert_array_equal(after[tid], vec)
        assert len(g.negative_vectors("bob")) == 1
        (ans,) = g.identify([people.print_of("cyd")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "cyd"

    def test_key_rotation(self, gallery: Gallery, open_store: OpenStore, location: tuple[str, bytes],
                          people: People) -> None:  # fmt: skip
        vectors = self.rotation_fixture(gallery, people)
        _, old = location
        chips = 9 if getattr(gallery, "keeps_chips", False) else 0
        other = open_store()  # another client, holding the old key only, that keeps serving meanwhile
        other.identify([people.print_of("ada")], threshold=THRESHOLD)
        during: list[int] = []

        def midway(phase: str, count: int) -> None:
            if phase == "batch" and not during:  # some values are under the new key now, some not
                self.assert_readable(other, people, vectors)  # it takes the new key up from the rotation record
                during.extend(t.id for t in other.add_templates("cyd", people.prints_of("cyd", 1)))

        report = gallery.rotate_key(NEW_KEY, batch=4, progress=midway)
        assert report.new_key_id == TemplateCipher(NEW_KEY).key_id and len(during) == 1
        assert 9 + chips + 1 <= report.reencrypted <= 9 + chips + 2  # the template added meanwhile: new key already
        vectors["cyd"] = gallery.template_vectors("cyd")
        self.assert_readable(gallery, people, vectors)  # online: the same client goes on
        self.assert_readable(other, people, vectors)
        other.close()
        late = gallery.add_subject("late")
        gallery.add_templates(late.id, people.prints_of("late", 1))
        gallery.close()
        with open_gallery(location[0], key=NEW_KEY) as g:
            self.assert_readable(g, people, vectors)
            assert len(g.template_vectors("late")) == 1
            assert g.rotate_key(NEW_KEY).reencrypted == 0  # a sweep: nothing left under the old key
        with pytest.raises(WrongKey, match="is not this gallery's key"):
            open_gallery(location[0], key=old)

    def test_key_rotation_killed_at_any_point_resumes(
        self, gallery: Gallery, location: tuple[str, bytes], people: People, tmp_path: Path
    ) -> None:
        vectors = self.rotation_fixture(gallery, people)
        gallery.close()
        where, old = location
        self.release(where)
        for phase, at in (("started", 0), ("batch", 2), ("batch", 6), ("reencrypted", 0)):
            run = subprocess.run(
                [sys.executable, "-c", ROTATE_SCRIPT, where, old.hex(), NEW_KEY.hex(), phase, str(at)],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert run.returncode == -signal.SIGKILL, run.stderr
            with open_gallery(where, key=old) as g:  # mid-rotation: the old key reads everything
                self.assert_readable(g, people, vectors)
            with pytest.raises(GalleryKeyError, match=r"rotation of this gallery.s key to key id .* is under way"):
                open_gallery(where, key=NEW_KEY)
            with open_gallery(where, key=old) as g, pytest.raises(GalleryKeyError, match="finish it with that key"):
                g.rotate_key(bytes(range(1, 33)))
            self.release(where)
        run = subprocess.run([sys.executable, "-c", ROTATE_SCRIPT, where, old.hex(), NEW_KEY.hex(), "-", "0"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr
        with open_gallery(where, key=NEW_KEY) as g:
            self.assert_readable(g, people, vectors)
        with pytest.raises(WrongKey):
            open_gallery(where, key=old)

    # -- templates --------------------------------------------------------------------------------------
    def test_templates_are_stored_with_provenance(self, gallery: Gallery, people: People) -> None:
        s = gallery.add_subject("ada")
        fp = people.print_of("ada", box=(10.0, 20.0, 110.0, 140.0))
        (t,) = gallery.add_templates(s.id, [fp], source_sha256=["ab" * 32])
        assert t.subject_id == s.id and t.model_id == MODEL
        assert t.box == (10.0, 20.0, 110.0, 140.0)
        assert t.source_sha256 == "ab" * 32
        assert t.quality == pytest.approx(0.9)
        assert [x.id for x in gallery.list_templates("ada")] == [t.id]
        vec = gallery.template_vectors("ada")[t.id]
        np.testing.assert_allclose(vec, fp.vector, atol=1e-6)
        assert gallery.get_subject("ada").template_count == 1
        with pytest.raises(SubjectNotFound):
            gallery.add_templates("ghost", [fp])

    def test_delete_template_removes_it_from_search(self, gallery: Gallery, people: People) -> None:
        s = gallery.add_subject("ada")
        first, second = people.prints_of("ada", 2)
        t1, t2 = gallery.add_templates(s.id, [first, second])
        pair = float(first.vector @ second.vector)
        (before,) = gallery.identify([first], threshold=THRESHOLD)
        assert before.match is not None and before.match.score > pair + 0.05  # the identical template counts
        gallery.delete_template(t1.id)
        (after,) = gallery.identify([first], threshold=THRESHOLD)
        assert after.match is not None and after.match.score == pytest.approx(pair, abs=1e-5)
        gallery.delete_template(t2.id)
        (gone,) = gallery.identify([first], threshold=THRESHOLD)
        assert gone.match is None and gone.candidates == ()
        assert gallery.list_templates(s.id) == []
        with pytest.raises(TemplateNotFound):
            gallery.delete_template(t1.id)

    # -- identification ---------------------------------------------------------------------------------
    def test_identify_ranks_and_answers_open_set(self, gallery: Gallery, people: People) -> None:
        ids = {name: self.enrol(gallery, people, name, 3) for name in ("ada", "bob", "cyd", "dee", "eve")}
        answers = gallery.identify([people.print_of("cyd")], top_k=3, threshold=THRESHOLD)
        (ans,) = answers
        assert ans.match is not None and ans.match.subject_id == ids["cyd"]
        assert ans.match.subject == "cyd"
        assert len(ans.candidates) == 3
        scores = [c.score for c in ans.candidates]
        assert scores == sorted(scores, reverse=True)
        assert ans.threshold == THRESHOLD
        (unknown,) = gallery.identify([people.stranger()], threshold=THRESHOLD)
        assert unknown.match is None
        assert len(unknown.candidates) <= 5
        assert gallery.identify([], threshold=THRESHOLD) == []

    def test_identify_threshold_from_fmr(self, gallery: Gallery, people: People, calibration: Calibration) -> None:
        self.enrol(gallery, people, "ada", 3)
        cal = calibration
        (ans,) = gallery.identify([people.print_of("ada")], fmr=1e-3, calibration=cal)
        assert ans.threshold == pytest.approx(cal.threshold_for(1e-3))
        assert ans.match is not None and ans.match.subject == "ada"
        (strict,) = gallery.identify([people.print_of("ada")], threshold=0.999)
        assert strict.match is None and strict.candidates[0].subject == "ada"

    # -- the threshold rule: fmr | fpir | threshold, stated in every answer ----------------------------------
    @pytest.fixture
    def calibration(self) -> Calibration:
        """A synthetic score → FMR table for MODEL: impostors around 0 (as these people), genuine around 0.8."""
        rng = np.random.default_rng(0)
        return Calibration.from_scores(MODEL, rng.normal(0.8, 0.05, 5000), rng.normal(0.0, 0.09, 50_000), "synthetic")

    def test_the_fmr_that_chose_the_threshold_is_reported(
        self, gallery: Gallery, people: People, calibration: Calibration
    ) -> None:
        self.enrol(gallery, people, "ada", 3)
        probes = [people.print_of("ada"), people.stranger()]
        for asked, fmr in (({"fmr": 1e-2}, 1e-2), ({}, DEFAULT_FMR)):  # none given: the default FMR
            answers = gallery.identify(probes, calibration=calibration, **asked)
            assert len(answers) == 2
            for ans in answers:
                assert (ans.fmr, ans.fpir) == (fmr, None)
                assert ans.threshold == pytest.approx(calibration.threshold_for(fmr))
                assert (ans.to_dict()["fmr"], ans.to_dict()["fpir"]) == (fmr, None)
            assert answers[0].match is not None and answers[0].match.subject == "ada"
            assert answers[1].match is None

    def test_fpir_threshold_grows_with_the_number_of_subjects(
        self, gallery: Gallery, people: People, calibration: Calibration
    ) -> None:
        self.enrol(gallery, people, "ada", 2)
        (one,) = gallery.identify([people.print_of("ada")], fpir=0.05, calibration=calibration)
        assert one.fpir == 0.05 and one.fmr == pytest.approx(fmr_for_fpir(0.05, 1))  # one subject: FMR = FPIR
        assert one.threshold == pytest.approx(calibration.threshold_for(fmr_for_fpir(0.05, 1)))
        with gallery.bulk():
            for i in range(8):
                self.enrol(gallery, people, f"person{i}", 1)
        gallery.add_subject("no templates yet")  # a subject counts whether or not it has templates
        (ten,) = gallery.identify([people.print_of("ada")], fpir=0.05, calibration=calibration)
        assert ten.fpir == 0.05 and ten.fmr == pytest.approx(fmr_for_fpir(0.05, 10))
        assert ten.fmr < one.fmr and ten.threshold > one.threshold
        assert ten.threshold == pytest.approx(calibration.threshold_for(fmr_for_fpir(0.05, 10)))
        assert ten.match is not None and ten.match.subject == "ada"
        assert (ten.to_dict()["fpir"], ten.to_dict()["fmr"]) == (0.05, ten.fmr)
        assert ten.rule.describe().startswith("FPIR 0.05 (FMR 5.1e-03 per comparison")
        with pytest.raises(InvalidThresholdRule):
            gallery.identify([people.print_of("ada")], fpir=1.5, calibration=calibration)

    def test_an_explicit_threshold_is_reported_as_a_raw_score(self, gallery: Gallery, people: People) -> None:
        self.enrol(gallery, people, "ada", 2)
        (ans,) = gallery.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert (ans.threshold, ans.fmr, ans.fpir) == (THRESHOLD, None, None)
        assert ans.rule.describe() == "explicit threshold"

    def test_two_rules_at_once_are_refused(self, gallery: Gallery, people: People, calibration: Calibration) -> None:
        self.enrol(gallery, people, "ada", 1)
        rules: list[dict[str, float]] = [
            {"fmr": 1e-3, "threshold": THRESHOLD},
            {"fmr": 1e-3, "fpir": 0.01},
            {"fpir": 0.01, "threshold": THRESHOLD},
            {"fmr": 1e-3, "fpir": 0.01, "threshold": THRESHOLD},
        ]
        for rule in rules:
            for probes in ([people.print_of("ada")], []):
                with pytest.raises(InvalidThresholdRule, match="at most one of fmr, fpir and threshold") as refused:
                    gallery.identify(probes, calibration=calibration, **rule)
                assert isinstance(refused.value, FaceprintError) and not isinstance(refused.value, ValueError)

    def test_subject_score_uses_several_templates(self, gallery: Gallery, people: People) -> None:
        self.enrol(gallery, people, "ada", 4)
        (ans,) = gallery.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert ans.match is not None
        assert ans.match.templates_matched >= 2
        # The subject's score is never above its best template's score.
        best = max(float(v @ people.centre("ada")) for v in gallery.template_vectors("ada").values())
        assert ans.match.score <= best + 0.2

    def test_faces_in_one_photo_are_assigned_one_to_one(self, gallery: Gallery, people: People) -> None:
        self.enrol(gallery, people, "ada", 3)
        self.enrol(gallery, people, "bob", 3)
        # Two faces both closest to ada (twins): only the closer one may be ada.
        close = Faceprint(people.centre("ada"), MODEL, None, 0.9)
        v = 0.6 * people.centre("ada") + 0.4 * people.centre("bob")
        twin = Faceprint(v / np.linalg.norm(v), MODEL, None, 0.9)
        a, b = gallery.identify([close, twin], threshold=THRESHOLD)
        assert a.match is not None and a.match.subject == "ada"
        assert b.match is None or b.match.subject != "ada"
        # Without the rule (probes of different photos) both would be ada.
        a2, b2 = gallery.identify([close, twin], threshold=THRESHOLD, one_to_one=False)
        assert a2.match is not None and b2.match is not None
        assert a2.match.subject == b2.match.subject == "ada"

    def test_a_correction_is_honoured(self, gallery: Gallery, people: People) -> None:
        self.enrol(gallery, people, "ada", 3)
        v = people.centre("ada") + 0.6 * people.centre("lookalike")
        lookalike = Faceprint(v / np.linalg.norm(v), MODEL, None, 0.9)
        (before,) = gallery.identify([lookalike], threshold=THRESHOLD)
        assert before.match is not None and before.match.subject == "ada"
        gallery.add_negative(lookalike, "ada")  # an operator says: that was not ada
        assert len(gallery.negative_vectors("ada")) == 1
        (after,) = gallery.identify([lookalike], threshold=THRESHOLD)
        assert after.match is None
        (real,) = gallery.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert real.match is not None and real.match.subject == "ada"  # ada herself still matches
        assert gallery.stats().negatives == 1

    # -- persistence and transfer -----------------------------------------------------------------------
    def test_everything_survives_reopen(self, open_store: OpenStore, people: People) -> None:
        g = open_store()
        g.ensure_collection("default", MODEL, DIM)
        sid = self.enrol(g, people, "ada", 3)
        self.enrol(g, people, "bob", 2)
        gone = self.enrol(g, people, "cyd", 2)
        g.delete_subject(gone)
        g.add_negative(people.stranger(), "bob")
        probe = people.print_of("ada")
        (first,) = g.identify([probe], threshold=THRESHOLD)
        g.close()

        g2 = open_store()
        try:
            (again,) = g2.identify([probe], threshold=THRESHOLD)
            assert again.match is not None and again.match.subject_id == sid
            assert [c.subject_id for c in again.candidates] == [c.subject_id for c in first.candidates]
            assert again.match.score == pytest.approx(first.match.score, abs=1e-5)  # type: ignore[union-attr]
            stats = g2.stats()
            assert (stats.subjects, stats.templates, stats.negatives) == (2, 5, 1)
            assert g2.find_subject(gone) is None
        finally:
            g2.close()

    def test_a_second_client_sees_committed_writes(self, open_store: OpenStore, people: People) -> None:
        a = open_store()
        a.ensure_collection("default", MODEL, DIM)
        b = open_store()
        try:
            self.enrol(a, people, "ada", 2)
            (ans,) = b.identify([people.print_of("ada")], threshold=THRESHOLD)  # b builds its index now
            assert ans.match is not None
            self.enrol(a, people, "bob", 2)
            a.delete_subject("ada")
            (bob,) = b.identify([people.print_of("bob")], threshold=THRESHOLD)
            assert bob.match is not None and bob.match.subject == "bob"
            (ada,) = b.identify([people.print_of("ada")], threshold=THRESHOLD)
            assert ada.match is None
        finally:
            b.close()
            a.close()

    def test_export_import_round_trip(
        self, gallery: Gallery, open_store: OpenStore, people: People, tmp_path: Path
    ) -> None:
        ada = gallery.add_subject("ada")
        gallery.add_templates(ada.id, [people.print_of("ada", box=(1.0, 2.0, 30.0, 40.0)) for _ in range(3)])
        bob = self.enrol(gallery, people, "bob", 2)
        gallery.update_subject(
            bob, metadata={"k": "v"}, consent=Consent("bob", datetime(2026, 5, 1, tzinfo=UTC), ("attendance",))
        )
        gallery.add_negative(people.stranger(), "bob")
        cipher = TemplateCipher(EXPORT_KEY)
        out = tmp_path / "export.fpg"
        report = export_gallery(gallery, out, cipher)
        assert (report.subjects, report.templates, report.negatives) == (2, 5, 1)
        assert b"ada" not in out.read_bytes()  # gzip of encrypted lines: names are not readable either

        gallery.delete_subject("ada")
        gallery.delete_subject("bob")
        back = import_gallery(gallery, out, cipher)
        assert (back.subjects, back.templates, back.negatives) == (2, 5, 1)
        assert gallery.list_templates("ada")[0].box == (1.0, 2.0, 30.0, 40.0)
        restored = gallery.get_subject("bob")
        assert restored.id == bob and restored.metadata == {"k": "v"} and restored.consent is not None
        (ans,) = gallery.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "ada"
        with pytest.raises(SubjectExists):
            import_gallery(gallery, out, cipher)
        assert import_gallery(gallery, out, cipher, skip_existing=True).skipped_subjects == 2

    def test_bulk_is_all_or_nothing(self, gallery: Gallery, people: People) -> None:
        self.enrol(gallery, people, "ada", 2)
        (gallery.identify([people.print_of("ada")], threshold=THRESHOLD))  # the index is loaded
        with gallery.bulk():
            for name in ("bob", "cyd", "dee"):
                s = gallery.add_subject(name)
                gallery.add_templates(s.id, people.prints_of(name, 2))
            gallery.delete_subject("ada")
        assert gallery.stats().subjects == 3
        (ans,) = gallery.identify([people.print_of("cyd")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "cyd"
        with pytest.raises(RuntimeError), gallery.bulk():
            s = gallery.add_subject("eve")
            gallery.add_templates(s.id, people.prints_of("eve", 2))
            gallery.delete_subject("bob")
            raise RuntimeError("abort the batch")
        assert gallery.find_subject("eve") is None and gallery.find_subject("bob") is not None
        (eve,) = gallery.identify([people.print_of("eve")], threshold=THRESHOLD)
        assert eve.match is None
        (bob,) = gallery.identify([people.print_of("bob")], threshold=THRESHOLD)
        assert bob.match is not None and bob.match.subject == "bob"

    def test_stats(self, gallery: Gallery, people: People) -> None:
        self.enrol(gallery, people, "ada", 3)
        self.enrol(gallery, people, "bob", 1)
        s = gallery.stats()
        assert (s.collection, s.model_id, s.dim, s.subjects, s.templates, s.negatives) == (
            "default",
            MODEL,
            DIM,
            2,
            4,
            0,
        )
        assert s.disk_bytes >= 0
