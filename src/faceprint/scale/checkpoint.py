"""The checkpoint of a bulk enrolment: an append-only JSON-lines file of what is finished.

A file is identified by its path under the root, size and modification time, so a photo replaced since
is done again. Each accepted photo gets two records: ``writing`` (with the photo's SHA-256) before its
template is written to the gallery, ``done`` after the gallery committed it. A run killed between the two
leaves a ``writing`` record; the next run looks the SHA-256 up in the subject's templates to learn whether
the commit happened, so no photo is enrolled twice and none is lost. Every record is flushed and fsynced;
a torn last line (killed mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from faceprint.errors import FaceprintError
from faceprint.gallery.enrol import ImageOutcome


@dataclass(frozen=True)
class FileKey:
    """A photo as the checkpoint knows it."""

    path: str  # relative to the enrolment root, with "/" separators
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, root: Path, path: Path) -> FileKey:
        st = path.stat()
        return cls(path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Pending:
    """A ``writing`` record without its ``done``: the template may or may not be in the gallery."""

    subject: str
    sha256: str
    outcome: ImageOutcome


def outcome_to_json(outcome: ImageOutcome) -> dict[str, Any]:
    return {
        "source": outcome.source,
        "accepted": outcome.accepted,
        "reasons": list(outcome.reasons),
        "template_id": outcome.template_id,
        "quality": outcome.quality,
        "faces": outcome.faces,
    }


def outcome_from_json(data: dict[str, Any]) -> ImageOutcome:
    return ImageOutcome(
        data["source"],
        bool(data["accepted"]),
        tuple(data.get("reasons") or ()),
        data.get("template_id"),
        data.get("quality"),
        int(data.get("faces") or 0),
    )


class CheckpointBusy(FaceprintError):
    """Another run is enrolling the same folder into the same collection right now."""


class Checkpoint:
    """Read what earlier runs finished, then append this run's progress.

    Holds an exclusive lock (``<checkpoint>.lock``) while open: two runs of the same enrolment at once
    would each analyse what the other is doing. The lock goes with the process, however it ends.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[FileKey, tuple[str, ImageOutcome]] = {}
        self.pending: dict[FileKey, Pending] = {}
        self._lock = _lock(path.with_name(path.name + ".lock"))
        self._load()
        self._file: TextIO | None = None

    def _load(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("r", encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    key = FileKey(rec["path"], int(rec["size"]), int(rec["mtime_ns"]))
                    outcome = outcome_from_json(rec["outcome"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a killed run
                if rec.get("state") == "done":
                    self.done[key] = (rec["subject"], outcome)
                    self.pending.pop(key, None)
                elif rec.get("state") == "writing" and key not in self.done:
                    self.pending[key] = Pending(rec["subject"], rec["sha256"], outcome)

    def writing(self, key: FileKey, subject: str, sha256: str, outcome: ImageOutcome) -> None:
        self._append({"state": "writing", "subject": subject, "sha256": sha256}, key, outcome)

    def finish(self, key: FileKey, subject: str, outcome: ImageOutcome) -> None:
        self._append({"state": "done", "subject": subject}, key, outcome)
        self.done[key] = (subject, outcome)
        self.pending.pop(key, None)

    def _append(self, record: dict[str, Any], key: FileKey, outcome: ImageOutcome) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = _ends_torn(self.path)
            self._file = self.path.open("a", encoding="utf-8")
            if torn:  # end the torn line, or this record would be glued to it and lost
                self._file.write("\n")
        record.update(path=key.path, size=key.size, mtime_ns=key.mtime_ns, outcome=outcome_to_json(outcome))
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _lock(path: Path) -> BinaryIO | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; do not run the same enrolment twice at once
        return None
    fh = path.open("ab")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise CheckpointBusy(
            f"another `faceprint enroll` is running this enrolment (lock {path}); wait for it or stop it"
        ) from None
    return fh


def _ends_torn(path: Path) -> bool:
    """Whether ``path`` ends in a line without its newline (a write cut short)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"
