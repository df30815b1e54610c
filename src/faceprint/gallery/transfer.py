"""Export a gallery to one file and import it elsewhere, backend-independent (uses only the protocol).

The file is gzip'd text: a plaintext header line (format, version, key id), then one line per record, each
AES-256-GCM-encrypted with the export key and bound to its line number, then an encrypted trailer with
the record count. Vectors never leave in plaintext; a truncated or reordered file fails to import.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceprint.gallery.base import Gallery
from faceprint.gallery.crypto import TemplateCipher
from faceprint.gallery.errors import GalleryCorrupt, SubjectExists, WrongKey
from faceprint.gallery.model import Consent, from_iso
from faceprint.types import Detection, Faceprint

FORMAT = "faceprint-gallery-export"
VERSION = 1


@dataclass(frozen=True)
class TransferReport:
    collections: int
    subjects: int
    templates: int
    negatives: int
    skipped_subjects: int = 0


def _records(gallery: Gallery, collections: list[str] | None) -> Iterator[dict[str, object]]:
    for coll in gallery.list_collections():
        if collections is not None and coll.name not in collections:
            continue
        yield {"type": "collection", "name": coll.name, "model_id": coll.model_id, "dim": coll.dim}
        cursor = None
        while True:
            page = gallery.list_subjects(collection=coll.name, limit=500, cursor=cursor)
            for subject in page.items:
                templates = gallery.list_templates(subject.id, collection=coll.name)
                vectors = gallery.template_vectors(subject.id, collection=coll.name)
                yield {
                    "type": "subject",
                    "collection": coll.name,
                    **subject.to_dict(),
                    "templates": [
                        {**t.to_dict(), "vector": base64.b64encode(vectors[t.id].astype("<f4").tobytes()).decode()}
                        for t in templates
                        if t.id in vectors
                    ],
                    "negatives": [
                        base64.b64encode(v.astype("<f4").tobytes()).decode()
                        for v in gallery.negative_vectors(subject.id, collection=coll.name)
                    ],
                }
            if page.next_cursor is None:
                break
            cursor = page.next_cursor


def export_gallery(
    gallery: Gallery, path: str | Path, cipher: TemplateCipher, *, collections: list[str] | None = None
) -> TransferReport:
    counts = {"collection": 0, "subject": 0, "templates": 0, "negatives": 0}
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with gzip.open(tmp, "wt", encoding="utf-8") as out:
        out.write(json.dumps({"format": FORMAT, "version": VERSION, "key_id": cipher.key_id}) + "\n")
        line = 0
        for record in _records(gallery, collections):
            line += 1
            counts[str(record["type"])] += 1
            if record["type"] == "subject":
                counts["templates"] += len(record["templates"])  # type: ignore[arg-type]
                counts["negatives"] += len(record["negatives"])  # type: ignore[arg-type]
            blob = cipher.encrypt(json.dumps(record, ensure_ascii=False).encode(), f"line:{line}".encode())
            out.write(base64.b64encode(blob).decode() + "\n")
        trailer = cipher.encrypt(json.dumps({"type": "end", "records": line}).encode(), b"end")
        out.write(base64.b64encode(trailer).decode() + "\n")
    tmp.replace(path)
    return TransferReport(counts["collection"], counts["subject"], counts["templates"], counts["negatives"])


def _read(path: Path, cipher: TemplateCipher) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as src:
        try:
            header = json.loads(src.readline())
        except ValueError:
            raise GalleryCorrupt(f"{path} is not a faceprint gallery export") from None
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise GalleryCorrupt(f"{path} is not a faceprint gallery export (version {VERSION})")
        if header.get("key_id") != cipher.key_id:
            raise WrongKey(
                f"{path} was exported with key id {header.get('key_id')}, not {cipher.key_id}: "
                "import it with the key it was exported with"
            )
        lines = [ln for ln in src.read().splitlines() if ln]
    if not lines:
        raise GalleryCorrupt(f"{path} is truncated (no trailer)")
    trailer = json.loads(cipher.decrypt(base64.b64decode(lines[-1]), b"end"))
    if trailer.get("records") != len(lines) - 1:
        raise GalleryCorrupt(f"{path} is truncated: {len(lines) - 1} of {trailer.get('records')} records")
    for number, text in enumerate(lines[:-1], start=1):
        yield json.loads(cipher.decrypt(base64.b64decode(text), f"line:{number}".encode()))


def import_gallery(
    gallery: Gallery, path: str | Path, cipher: TemplateCipher, *, skip_existing: bool = False
) -> TransferReport:
    """Load an export into ``gallery`` (subjects keep their ids; an existing name is an error unless skipped).

    The whole file is decrypted and verified before the first record is written.
    """
    records = list(_read(Path(path), cipher))
    counts = {"collection": 0, "subject": 0, "templates": 0, "negatives": 0, "skipped": 0}
    with gallery.bulk():  # all or nothing
        for rec in records:
            _import_record(gallery, rec, counts, skip_existing)
    return TransferReport(
        counts["collection"], counts["subject"], counts["templates"], counts["negatives"], counts["skipped"]
    )


def _import_record(gallery: Gallery, rec: dict, counts: dict[str, int], skip_existing: bool) -> None:
    if rec["type"] == "collection":
        gallery.ensure_collection(rec["name"], rec["model_id"], int(rec["dim"]))
        counts["collection"] += 1
        return
    coll = gallery.get_collection(rec["collection"])
    if gallery.find_subject(rec["id"], collection=coll.name) or gallery.find_subject(rec["name"], collection=coll.name):
        if skip_existing:
            counts["skipped"] += 1
            return
        raise SubjectExists(rec["name"], coll.name)
    consent = None if rec["consent"] is None else Consent.from_dict(rec["consent"])
    gallery.add_subject(
        rec["name"],
        collection=coll.name,
        metadata=rec["metadata"],
        consent=consent,
        expires_at=from_iso(rec["expires_at"]),
        subject_id=rec["id"],
    )
    prints = [
        Faceprint(
            np.frombuffer(base64.b64decode(t["vector"]), dtype="<f4").copy(),
            t["model_id"],
            None if t["box"] is None else Detection(box=tuple(t["box"]), score=float("nan")),
            t["quality"],
        )
        for t in rec["templates"]
    ]
    if prints:
        gallery.add_templates(
            rec["id"], prints, collection=coll.name, source_sha256=[t["source_sha256"] for t in rec["templates"]]
        )
    for neg in rec["negatives"]:
        vec = np.frombuffer(base64.b64decode(neg), dtype="<f4").copy()
        gallery.add_negative(Faceprint(vec, coll.model_id), rec["id"], collection=coll.name)
    counts["subject"] += 1
    counts["templates"] += len(prints)
    counts["negatives"] += len(rec["negatives"])
