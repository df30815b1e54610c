"""The gallery contract on Milvus, run against Milvus Lite (a ``*.db`` file; the same pymilvus client code
talks to a Milvus server for ``milvus://host:19530``)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from milvus_lite.server_manager import server_manager_instance

from faceprint.gallery import GalleryError, WrongKey, open_gallery
from faceprint.gallery.milvus import MilvusGallery, parse_uri
from tests.gallery_contract import (
    DIM,
    MODEL,
    THRESHOLD,
    GalleryContract,
    OpenStore,
    People,
    check_cli_identify_with_fpir,
)

KEY = bytes.fromhex("33" * 32)


class TestMilvusContract(GalleryContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> OpenStore:
        return lambda: MilvusGallery(str(tmp_path / "gallery.db"), key=KEY)

    @pytest.fixture
    def location(self, tmp_path: Path) -> tuple[str, bytes]:
        return str(tmp_path / "gallery.db"), KEY

    def release(self, where: str) -> None:
        server_manager_instance.release_server(where)


# -- what only this backend promises ------------------------------------------------------------------------
def test_open_gallery_dispatches_db_files_to_milvus_lite(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="no gallery"):
        open_gallery(tmp_path / "faces.db", key=KEY, create=False)
    with open_gallery(tmp_path / "faces.db", key=KEY) as g:
        assert isinstance(g, MilvusGallery)
        g.ensure_collection("default", MODEL, DIM)
    with open_gallery(str(tmp_path / "faces.db"), key=KEY, create=False) as g:
        assert g.get_collection().dim == DIM
    with pytest.raises(WrongKey):
        MilvusGallery(str(tmp_path / "faces.db"), key=bytes(32))


def test_server_uris() -> None:
    assert parse_uri("milvus://localhost:19530") == ("http://localhost:19530", {})
    assert parse_uri("milvus+https://u:p%40ss@db.example:443/faces") == (
        "https://db.example:443",
        {"token": "u:p@ss", "db_name": "faces"},
    )


def test_vectors_are_encrypted_and_enrolment_is_searchable_at_once(tmp_path: Path) -> None:
    people = People()
    with MilvusGallery(str(tmp_path / "g.db"), key=KEY) as g:
        g.ensure_collection("default", MODEL, DIM)
        s = g.add_subject("ada")
        (fp,) = people.prints_of("ada", 1)
        (t,) = g.add_templates(s.id, [fp])
        (ans,) = g.identify([fp], threshold=THRESHOLD)  # no flush, no wait: Strong consistency
        assert ans.match is not None and ans.match.subject_id == s.id
        names = g._names("default")
        (row,) = g._query(names.templates, f"id == {t.id}", ["enc"])
        assert len(row["enc"]) == len(base64.b64encode(bytes(9 + 12 + 4 * DIM + 16)))  # key id ‖ nonce ‖ ct ‖ tag
        np.testing.assert_allclose(g.template_vectors("ada")[t.id], fp.vector, atol=1e-6)


def test_names_with_quotes_are_safe_in_filters(tmp_path: Path) -> None:
    with MilvusGallery(str(tmp_path / "g.db"), key=KEY) as g:
        g.ensure_collection("default", MODEL, DIM)
        tricky = 'O\'Brien "the \\ one" or id != ""'
        s = g.add_subject(tricky)
        g.add_subject("other")
        assert g.get_subject(tricky).id == s.id
        g.delete_subject(tricky)
        assert g.find_subject(tricky) is None and g.find_subject("other") is not None


def test_galleries_with_different_prefixes_share_one_milvus(tmp_path: Path) -> None:
    people = People()
    uri = str(tmp_path / "shared.db")
    with MilvusGallery(uri, key=KEY, prefix="site_s_a") as a, MilvusGallery(uri, key=KEY, prefix="site_b") as b:
        for g in (a, b):
            g.ensure_collection("default", MODEL, DIM)
            s = g.add_subject("ada")
            g.add_templates(s.id, people.prints_of("ada", 2))
        with a.bulk():
            a.delete_subject("ada")
        assert a.find_subject("ada") is None and a.stats().templates == 0
        (ans,) = b.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert ans.match is not None and b.stats().templates == 2


def test_cli_identify_with_fpir(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`faceprint identify --gallery faces.db --fpir 0.01` answers, and says which rule it used."""
    check_cli_identify_with_fpir(str(tmp_path / "faces.db"), KEY, monkeypatch, tmp_path / "home")


def test_erasure_then_scrub_leaves_no_template_bytes_in_milvus_lite_files(tmp_path: Path) -> None:
    """Milvus deletes are tombstones: after delete_subject the vectors are still in the sealed segment files
    (shown here, so the limit is documented by a test); scrub rebuilds the collections and then no file of the
    Milvus Lite directory holds them."""
    people = People(seed=1818)  # vectors no other test of the shared server stores
    path = tmp_path / "g.db"
    with MilvusGallery(str(path), key=KEY) as g:
        g.ensure_collection("default", MODEL, DIM)
        ada = g.add_subject("Adalinde Quist")
        g.add_templates(ada.id, people.prints_of("ada", 3))
        bob = g.add_subject("bob")
        g.add_templates(bob.id, people.prints_of("bob", 3))
        names = g._names("default")
        rows = g._query(names.templates, "id >= 0", ["subject_id", "enc", "vector"])
        hers = [np.asarray(r["vector"], dtype="<f4").tobytes() for r in rows if r["subject_id"] == ada.id]
        hers += [r["enc"].encode() for r in rows if r["subject_id"] == ada.id]
        kept = [r["enc"].encode() for r in rows if r["subject_id"] == bob.id]
        for name in (names.subjects, names.templates):
            g.client.flush(name)  # sealed segments on disk
        assert _holding(path, hers)  # the scan sees them
        g.delete_subject(ada.id)
        assert _holding(path, hers)  # a tombstone only: the engine's limit
        assert g.scrub() == "2 Milvus collection(s) rebuilt without deleted rows"
        assert _holding(path, hers) == set()
        assert _holding(path, kept) == set(range(len(kept)))  # the control: bob's rows were copied back
        (ans,) = g.identify([people.print_of("bob")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "bob"
        assert g.get_subject("bob").template_count == 3 and g.find_subject(ada.id) is None
    with MilvusGallery(str(path), key=KEY) as g:  # reopened: the rebuilt collections load
        (ans,) = g.identify([people.print_of("bob")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "bob"


def _holding(root: Path, needles: list[bytes]) -> set[int]:
    found: set[int] = set()
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                data = (Path(dirpath) / name).read_bytes()
            except OSError:
                continue
            found |= {i for i, needle in enumerate(needles) if needle in data}
    return found


def test_an_interrupted_scrub_is_finished_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrub that dies after dropping a collection (while refilling it from the staging copy) leaves the
    copy and its marker; the next scrub restores from them, and nothing is lost."""
    people = People(seed=99)
    with MilvusGallery(str(tmp_path / "g.db"), key=KEY) as g:
        g.ensure_collection("default", MODEL, DIM)
        for name in ("ada", "bob"):
            s = g.add_subject(name)
            g.add_templates(s.id, people.prints_of(name, 2))
        g.delete_subject("ada")
        copies = []
        real_copy = g._copy

        def dying_copy(source: str, target: str, every: str) -> None:
            copies.append(target)
            if "_t_" in target and not target.endswith("_scrub"):  # refilling the templates after the drop
                raise RuntimeError("killed while refilling")
            real_copy(source, target, every)

        monkeypatch.setattr(g, "_copy", dying_copy)
        with pytest.raises(RuntimeError, match="killed while refilling"):
            g.scrub()
        monkeypatch.setattr(g, "_copy", real_copy)
        assert g.scrub() == "2 Milvus collection(s) rebuilt without deleted rows"
        (ans,) = g.identify([people.print_of("bob")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "bob"
        assert g.get_subject("bob").template_count == 2 and g.find_subject("ada") is None
        assert not [c for c in g.client.list_collections() if c.endswith("_scrub")]
