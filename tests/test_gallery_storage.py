"""What the embedded backend promises beyond the contract: encryption at rest, keys, the index cache,
durability under SIGKILL, threads, and several processes on one gallery."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from faceprint.gallery import (
    EmbeddedGallery,
    GalleryKeyError,
    GalleryLocked,
    MissingKey,
    WrongKey,
)
from faceprint.gallery.index import AdaptiveIndex, ExactIndex, HNSWIndex
from faceprint.gallery.model import CollectionPolicy
from faceprint.gallery.schema import MIGRATIONS
from faceprint.types import Faceprint
from tests.gallery_contract import DIM, MODEL, THRESHOLD, People

KEY = bytes.fromhex("22" * 32)
OTHER_KEY = bytes.fromhex("33" * 32)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the user's real key or config dir."""
    monkeypatch.delenv("FACEPRINT_KEY", raising=False)
    monkeypatch.delenv("FACEPRINT_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def make(path: Path, people: People, names: list[str], n: int = 2, **kw: object) -> EmbeddedGallery:
    g = EmbeddedGallery(path, key=KEY, **kw)  # type: ignore[arg-type]
    g.ensure_collection("default", MODEL, DIM)
    for name in names:
        s = g.add_subject(name)
        g.add_templates(s.id, people.prints_of(name, n))
    return g


# -- encryption and keys ------------------------------------------------------------------------------
def test_vectors_are_not_stored_in_plaintext(tmp_path: Path) -> None:
    people = People()
    g = make(tmp_path / "g", people, ["ada", "bob"])
    vectors = [v for name in ("ada", "bob") for v in g.template_vectors(name).values()]
    g.identify([people.print_of("ada")], threshold=THRESHOLD)  # loads the index, saved on close
    g.close()
    stored = b"".join(p.read_bytes() for p in (tmp_path / "g").iterdir() if p.is_file())
    assert len(stored) > 0
    for v in vectors:
        assert v.astype("<f4").tobytes()[:16] not in stored  # not even a fragment of 4 floats
    assert (tmp_path / "g" / "index-1.fpidx").is_file()  # the index snapshot is there, and encrypted


def test_wrong_or_missing_key_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path / "g", People(), ["ada"]).close()
    with pytest.raises(WrongKey, match="not this gallery's key"):
        EmbeddedGallery(tmp_path / "g", key=OTHER_KEY)
    with pytest.raises(MissingKey, match="FACEPRINT_KEY"):
        EmbeddedGallery(tmp_path / "g")
    assert not (tmp_path / "config").exists()  # opening an existing gallery never creates a key
    monkeypatch.setenv("FACEPRINT_KEY", OTHER_KEY.hex())
    with pytest.raises(WrongKey):
        EmbeddedGallery(tmp_path / "g")
    monkeypatch.setenv("FACEPRINT_KEY", "not a key")
    with pytest.raises(GalleryKeyError, match="FACEPRINT_KEY"):
        EmbeddedGallery(tmp_path / "g")
    monkeypatch.setenv("FACEPRINT_KEY", KEY.hex())
    with EmbeddedGallery(tmp_path / "g") as g:
        assert g.get_subject("ada").template_count == 2


def test_key_file_is_created_0600_for_a_new_gallery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "keys" / "gallery.key"
    monkeypatch.setenv("FACEPRINT_KEY_FILE", str(key_file))
    with EmbeddedGallery(tmp_path / "g") as g:
        g.ensure_collection("default", MODEL, DIM)
        g.add_subject("ada")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with EmbeddedGallery(tmp_path / "g") as g:  # the same file opens it again
        assert g.get_subject("ada").name == "ada"
    monkeypatch.delenv("FACEPRINT_KEY_FILE")
    with EmbeddedGallery(tmp_path / "other") as g:  # the default key file, under the user config dir
        pass
    default = tmp_path / "config" / "faceprint" / "gallery.key"
    assert stat.S_IMODE(default.stat().st_mode) == 0o600


def test_a_vector_moved_to_another_subject_does_not_decrypt(tmp_path: Path) -> None:
    make(tmp_path / "g", People(), ["ada", "bob"], n=1).close()
    db = sqlite3.connect(tmp_path / "g" / "gallery.sqlite3")
    (ada_blob,) = db.execute(
        "SELECT vector FROM templates t JOIN subjects s ON s.id = t.subject_id WHERE s.name = 'ada'"
    ).fetchone()
    db.execute(
        "UPDATE templates SET vector = ? WHERE subject_id = (SELECT id FROM subjects WHERE name = 'bob')",
        (ada_blob,),
    )
    db.commit()
    db.close()
    with EmbeddedGallery(tmp_path / "g", key=KEY) as g, pytest.raises(WrongKey, match="tampered"):
        g.template_vectors("bob")


# -- schema and the index cache ------------------------------------------------------------------------
def test_database_settings(tmp_path: Path) -> None:
    with EmbeddedGallery(tmp_path / "g", key=KEY) as g:
        conn = g._db.reader()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    with EmbeddedGallery(tmp_path / "g", key=KEY) as g:  # migrations are not re-applied
        assert g.integrity_check() == []


def test_stale_missing_or_corrupt_index_is_rebuilt(tmp_path: Path) -> None:
    people = People()
    path = tmp_path / "g"
    g = make(path, people, ["ada", "bob"])
    g.identify([people.print_of("ada")], threshold=THRESHOLD)
    g.close()
    index_file = path / "index-1.fpidx"
    saved = index_file.read_bytes()
    with EmbeddedGallery(path, key=KEY) as g:  # a change the saved snapshot does not know about
        s = g.add_subject("cyd")
        g.add_templates(s.id, people.prints_of("cyd", 2))
        g._index.states.clear()  # as if this process died before saving
        g._closed = True
        g._db.close()
    index_file.write_bytes(saved)  # stale snapshot on disk
    with EmbeddedGallery(path, key=KEY) as g:
        (ans,) = g.identify([people.print_of("cyd")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "cyd"
    index_file.write_bytes(b"garbage")
    with EmbeddedGallery(path, key=KEY) as g:
        (ans,) = g.identify([people.print_of("bob")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "bob"
    index_file.unlink()
    with EmbeddedGallery(path, key=KEY) as g:
        (ans,) = g.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "ada"
    assert index_file.is_file()


def _no_rebuild(g: EmbeddedGallery, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("a full rebuild was not needed here")

    monkeypatch.setattr(g._index, "rebuild", refuse)


def test_another_process_changes_are_caught_up_from_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    people = People()
    path = tmp_path / "g"
    a = make(path, people, ["ada", "bob", "cyd"])
    b = EmbeddedGallery(path, key=KEY)
    b.identify([people.print_of("bob")], threshold=THRESHOLD)  # b holds an index now
    _no_rebuild(b, monkeypatch)
    s = a.add_subject("dee")
    a.add_templates(s.id, people.prints_of("dee", 2))
    a.delete_subject("bob")
    (cyd_t1, _) = a.list_templates("cyd")
    a.delete_template(cyd_t1.id)
    a.add_negative(people.print_of("ada"), "cyd")
    (dee,) = b.identify([people.print_of("dee")], threshold=THRESHOLD)
    (bob,) = b.identify([people.print_of("bob")], threshold=THRESHOLD)
    assert dee.match is not None and dee.match.subject == "dee"
    assert bob.match is None and all(c.subject != "bob" for c in bob.candidates)
    assert b.stats().negatives == 1 and len(b.negative_vectors("cyd")) == 1
    assert sorted(b._index.states[1].index.items()[0].tolist()) == sorted(
        t.id for name in ("ada", "cyd", "dee") for t in a.list_templates(name)
    )
    b.close()
    a.close()
    # A snapshot saved earlier is caught up from the log too (no rebuild on open).
    c = EmbeddedGallery(path, key=KEY)
    c.add_subject("eve")
    c.add_templates("eve", people.prints_of("eve", 2))
    c.close()
    d = EmbeddedGallery(path, key=KEY)
    _no_rebuild(d, monkeypatch)
    (eve,) = d.identify([people.print_of("eve")], threshold=THRESHOLD)
    assert eve.match is not None and eve.match.subject == "eve"
    d.close()


def test_a_gallery_made_before_the_change_log_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faceprint.gallery import schema

    people = People()
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", MIGRATIONS[:1])
        m.setattr(EmbeddedGallery, "_load_policy", lambda self, handle: CollectionPolicy())  # a writer from then
        make(tmp_path / "g", people, ["ada", "bob"]).close()  # written by the schema-1 triggers
    with EmbeddedGallery(tmp_path / "g", key=KEY) as g:
        conn = g._db.reader()
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        generation, since = conn.execute("SELECT generation, log_since FROM collections").fetchone()
        assert since == generation > 0
        (ada,) = g.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert ada.match is not None and ada.match.subject == "ada"
        g.delete_subject("ada")
        assert g.integrity_check() == []
    with EmbeddedGallery(tmp_path / "g", key=KEY) as g:
        (ada,) = g.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert ada.match is None


def test_index_switches_between_exact_and_hnsw() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = np.arange(1000, 1300)
    index = AdaptiveIndex(32, ann_min_size=200)
    index.add(keys[:150], vectors[:150])
    assert index.kind == "exact"
    index.add(keys[150:], vectors[150:])
    assert index.kind == "hnsw"
    got, scores = index.search(vectors[:5], 3)
    assert got[:, 0].tolist() == keys[:5].tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    index.remove(keys[:250])
    assert index.kind == "exact" and len(index) == 50
    got, _ = index.search(vectors[290:291], 1)
    assert got[0, 0] == 1290
    restored = HNSWIndex.from_bytes(HNSWIndex(32).to_bytes(), 32)
    assert len(restored) == 0


def test_exact_index_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    index = ExactIndex(16)
    index.add(np.arange(500), vectors)
    index.remove(np.arange(0, 500, 3))
    alive = np.array([i for i in range(500) if i % 3])
    q = rng.standard_normal((4, 16)).astype(np.float32)
    keys, scores = index.search(q, 10)
    brute = q @ vectors[alive].T
    expect = alive[np.argsort(-brute, axis=1)[:, :10]]
    assert keys.tolist() == expect.tolist()
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :10], rtol=1e-5)
    clone = ExactIndex.from_bytes(index.to_bytes(), 16)
    assert clone.search(q, 10)[0].tolist() == keys.tolist()


# -- durability and concurrency -----------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from faceprint.gallery import EmbeddedGallery
    from faceprint.types import Faceprint
    path, start, count, flush_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    g = EmbeddedGallery(path, key=bytes.fromhex("22" * 32), lock_timeout=30)
    g.ensure_collection("default", "test-model-v1", 128)
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        vecs = rng.standard_normal((2, 128)).astype(np.float32)
        s = g.add_subject(f"p{i:05d}")
        ts = g.add_templates(s.id, [Faceprint(v / np.linalg.norm(v), "test-model-v1") for v in vecs])
        print("ack", s.id, *[t.id for t in ts], flush=True)
        if flush_every and i % flush_every == 0:  # keep an index snapshot on disk, soon stale
            g.identify([Faceprint(vecs[0] / np.linalg.norm(vecs[0]), "test-model-v1")], threshold=0.99)
            g.flush_index()
    g.close()
    print("done", flush=True)
    """
)


def run_child(path: Path, start: int, count: int, flush_every: int = 0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(start), str(count), str(flush_every)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigkill_during_bulk_enrolment_leaves_a_consistent_gallery(tmp_path: Path) -> None:
    path = tmp_path / "g"
    child = run_child(path, 0, 100_000, flush_every=7)
    acked: dict[str, list[int]] = {}
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("ack"):
            _, sid, *tids = line.split()
            acked[sid] = [int(t) for t in tids]
        if len(acked) >= 40:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with EmbeddedGallery(path, key=KEY) as g:
        assert g.integrity_check() == []
        stats = g.stats()
        assert len(acked) <= stats.subjects <= len(acked) + 1  # every acknowledged enrolment, maybe one more
        for sid, tids in acked.items():
            vectors = g.template_vectors(sid)
            assert sorted(vectors) == sorted(tids)
        # Every template in the database decrypts and is searchable: probe with a few of them.
        sample = list(acked.items())[:: max(1, len(acked) // 8)]
        for sid, tids in sample:
            vec = g.template_vectors(sid)[tids[0]]
            (ans,) = g.identify([Faceprint(vec, MODEL)], threshold=0.9, one_to_one=False)
            assert ans.candidates[0].subject_id == sid
        # No template without a subject, no half-written subject (a subject row is written before its
        # templates, so a kill between the two leaves a subject with none — still consistent).
        conn = g._db.reader()
        counts = conn.execute(
            "SELECT COUNT(*) FROM subjects s WHERE (SELECT COUNT(*) FROM templates t WHERE t.subject_id = s.id) "
            "NOT IN (0, 2)"
        ).fetchone()[0]
        assert counts == 0


def test_readers_and_a_writer_in_threads(tmp_path: Path) -> None:
    people = People()
    g = make(tmp_path / "g", people, [f"base{i}" for i in range(10)])
    probes = {f"base{i}": people.print_of(f"base{i}") for i in range(10)}
    new_prints = {f"new{i}": people.prints_of(f"new{i}", 2) for i in range(30)}
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                for name, fp in probes.items():
                    (ans,) = g.identify([fp], threshold=THRESHOLD)
                    assert ans.match is not None and ans.match.subject == name
                    g.list_subjects(limit=7)
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            for name, prints in new_prints.items():
                s = g.add_subject(name)
                g.add_templates(s.id, prints)
            g.delete_subject("new0")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join(timeout=60)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert g.stats().subjects == 10 + 29
    (ans,) = g.identify([people.print_of("new7")], threshold=THRESHOLD)
    assert ans.match is not None and ans.match.subject == "new7"
    # The incrementally maintained index equals one rebuilt from SQLite.
    live_keys = sorted(g._index.states[1].index.items()[0].tolist())
    g.rebuild_index()
    assert sorted(g._index.states[1].index.items()[0].tolist()) == live_keys
    g.close()


def test_two_processes_writing_one_gallery_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "g"
    EmbeddedGallery(path, key=KEY).close()
    a, b = run_child(path, 0, 25), run_child(path, 1000, 25)
    _, err_a = a.communicate(timeout=120)
    _, err_b = b.communicate(timeout=120)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    with EmbeddedGallery(path, key=KEY) as g:
        assert g.stats().subjects == 50 and g.stats().templates == 100
        assert g.integrity_check() == []


def test_a_writer_blocked_by_another_process_gets_gallery_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "g"
    EmbeddedGallery(path, key=KEY).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('holding', flush=True)\n"
            "time.sleep(30)\n",
            str(path / "gallery.sqlite3"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with EmbeddedGallery(path, key=KEY, lock_timeout=0.3) as g:
            assert g.list_collections() == []  # reading still works
            started = time.monotonic()
            with pytest.raises(GalleryLocked, match="gallery is locked"):
                g.ensure_collection("default", MODEL, DIM)
            assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
