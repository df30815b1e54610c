"""The embedded gallery's side of :class:`~faceprint.gallery.base.Migratable` (driven by
:mod:`faceprint.gallery.migrate`), mixed into :class:`~faceprint.gallery.embedded.EmbeddedGallery`.

New vectors are staged in ``migration_staging`` in small committed batches while the collection keeps serving
its current model; :meth:`SqliteMigration.finish_migration` swaps them in with one transaction. Until then
nothing a search reads has changed, so an interrupted run leaves the collection as it was, and the next run
re-embeds only what was not staged yet.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from faceprint.gallery.crypto import TemplateCipher, open_chip, seal_vector
from faceprint.gallery.embedded.database import Database, chunks, marks
from faceprint.gallery.embedded.index_cache import IndexCache
from faceprint.gallery.errors import CollectionNotFound, GalleryCorrupt, GalleryError, MissingChips
from faceprint.gallery.model import Collection, MigrationCounts, MigrationSwitch, PendingChip
from faceprint.matching import normalise

_IN_COLLECTION = "SELECT id FROM subjects WHERE collection_id = ?"


class SqliteMigration:
    """The staging methods of :class:`~faceprint.gallery.base.Migratable` on the embedded gallery's SQLite."""

    _db: Database
    _index: IndexCache
    cipher: TemplateCipher

    if TYPE_CHECKING:

        def _collection(self, name: str) -> tuple[int, Collection]: ...

    def migration_counts(self, collection: str, target_model: str) -> MigrationCounts:
        """What re-embedding ``collection`` for ``target_model`` involves (read-only)."""
        cid, coll = self._collection(collection)
        with self._db.read() as conn:
            total, chips, subjects = conn.execute(
                "SELECT COUNT(*), SUM(t.chip IS NOT NULL), COUNT(DISTINCT t.subject_id) FROM templates t "
                "JOIN subjects s ON s.id = t.subject_id WHERE s.collection_id = ?",
                (cid,),
            ).fetchone()
            missing_subjects = [
                str(r[0])
                for r in conn.execute(
                    "SELECT DISTINCT s.name FROM templates t JOIN subjects s ON s.id = t.subject_id "
                    "WHERE s.collection_id = ? AND t.chip IS NULL ORDER BY s.name",
                    (cid,),
                )
            ]
            chip_templates = {
                (None if r[0] is None else str(r[0])): int(r[1])
                for r in conn.execute(
                    "SELECT t.chip_template, COUNT(*) FROM templates t JOIN subjects s ON s.id = t.subject_id "
                    "WHERE s.collection_id = ? AND t.chip IS NOT NULL GROUP BY t.chip_template",
                    (cid,),
                )
            }
            staged = conn.execute(
                "SELECT COUNT(*) FROM migration_staging WHERE collection_id = ? AND model_id = ?", (cid, target_model)
            ).fetchone()[0]
            negatives = conn.execute(
                "SELECT COUNT(*) FROM negatives n JOIN subjects s ON s.id = n.subject_id WHERE s.collection_id = ?",
                (cid,),
            ).fetchone()[0]
        return MigrationCounts(
            coll, int(total), int(chips or 0), int(subjects), missing_subjects, chip_templates, int(staged),
            int(negatives),
        )  # fmt: skip

    def start_migration(self, collection: str, target_model: str) -> None:
        """Forget vectors staged by an interrupted migration to another model (those for this one are kept)."""
        cid, _ = self._collection(collection)
        with self._db.write() as conn:
            conn.execute("DELETE FROM migration_staging WHERE collection_id = ? AND model_id != ?", (cid, target_model))

    def migration_pending(self, collection: str, target_model: str, limit: int) -> list[PendingChip]:
        """Up to ``limit`` templates of the collection with a chip and no vector staged for ``target_model``,
        in id order, their chips decrypted."""
        cid, _ = self._collection(collection)
        return self._pending_chips(self._db.reader(), cid, target_model, limit)

    def _pending_chips(self, conn: sqlite3.Connection, cid: int, target_model: str, limit: int) -> list[PendingChip]:
        rows = conn.execute(
            "SELECT t.id, t.subject_id, s.name, t.chip, t.chip_template FROM templates t "
            "JOIN subjects s ON s.id = t.subject_id "
            "LEFT JOIN migration_staging m ON m.template_id = t.id AND m.model_id = ? "
            "WHERE s.collection_id = ? AND t.chip IS NOT NULL AND m.template_id IS NULL ORDER BY t.id LIMIT ?",
            (target_model, cid, int(limit)),
        ).fetchall()
        out: list[PendingChip] = []
        for tid, sid, name, blob, chip_template in rows:
            try:
                chip = open_chip(self.cipher, blob, sid)
            except (GalleryError, ValueError) as exc:  # WrongKey (altered bytes), a broken header or size
                raise GalleryCorrupt(
                    f"the stored chip of template {tid} (subject {name!r}) is unreadable ({exc}); delete that "
                    f"template (`faceprint subjects delete {name!r} --template {tid}`) and re-enrol the subject "
                    "from a photo, then run migrate again: the templates already re-embedded are kept"
                ) from None
            out.append(PendingChip(int(tid), str(sid), str(name), chip, chip_template))
        return out

    def stage_migration(
        self, collection: str, source_model: str, target_model: str, staged: Sequence[tuple[int, str, np.ndarray]]
    ) -> None:
        """Store new vectors ``(template id, subject id, vector)`` for ``target_model`` in one transaction.

        Nothing a search reads changes. A template deleted meanwhile is skipped.
        """
        cid, _ = self._collection(collection)
        with self._db.write() as conn:
            _check_source(conn, cid, collection, source_model)
            self._stage(conn, cid, target_model, staged)

    def _stage(
        self, conn: sqlite3.Connection, cid: int, target_model: str, staged: Sequence[tuple[int, str, np.ndarray]]
    ) -> None:
        for tid, sid, vec in staged:
            conn.execute(
                "INSERT OR REPLACE INTO migration_staging (template_id, collection_id, model_id, vector) "
                "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM templates WHERE id = ? AND subject_id = ?)",
                (tid, cid, target_model, seal_vector(self.cipher, normalise(vec), sid, target_model), tid, sid),
            )

    def finish_migration(
        self,
        collection: str,
        source_model: str,
        target_model: str,
        dim: int,
        *,
        source_template: str | None,
        drop_missing: bool,
        embed: Callable[[list[PendingChip]], np.ndarray],
        batch: int = 64,
    ) -> MigrationSwitch:
        """Switch the collection to ``target_model`` in one transaction: every template gets its staged vector
        (templates enrolled since staging are embedded here with ``embed``), chip-less templates are deleted
        when ``drop_missing`` (else :class:`MissingChips`), negatives of the old model are deleted, and the
        collection's model, dimension and generation change; every cached index is invalidated.

        ``source_template``: the chip template of chips that do not record one (those enrolled with the source
        model), recorded now so later migrations know how they were cut.
        """
        cid, _ = self._collection(collection)
        with self._db.write() as conn:
            _check_source(conn, cid, collection, source_model)
            conn.execute("DELETE FROM migration_staging WHERE collection_id = ? AND model_id != ?", (cid, target_model))
            missing = conn.execute(
                "SELECT t.id, s.name FROM templates t JOIN subjects s ON s.id = t.subject_id "
                "WHERE s.collection_id = ? AND t.chip IS NULL ORDER BY t.id",
                (cid,),
            ).fetchall()
            if missing and not drop_missing:
                total = conn.execute(
                    f"SELECT COUNT(*) FROM templates WHERE subject_id IN ({_IN_COLLECTION})", (cid,)
                ).fetchone()[0]
                names = sorted({str(r[1]) for r in missing})
                raise MissingChips(collection, len(missing), int(total), names[:10], len(names))
            for chunk in chunks([int(r[0]) for r in missing]):
                conn.execute(f"DELETE FROM templates WHERE id IN ({marks(chunk)})", chunk)
            late = 0
            while pending := self._pending_chips(conn, cid, target_model, batch):
                vectors = embed(pending)
                self._stage(conn, cid, target_model, [(p.template_id, p.subject_id, v) for p, v in
                                                      zip(pending, vectors, strict=True)])  # fmt: skip
                late += len(pending)
            templates, subjects, unstaged = conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT t.subject_id), SUM(m.template_id IS NULL) FROM templates t "
                "LEFT JOIN migration_staging m ON m.template_id = t.id AND m.model_id = ? "
                f"WHERE t.subject_id IN ({_IN_COLLECTION})",
                (target_model, cid),
            ).fetchone()
            if unstaged:  # cannot happen (every template has a chip and was staged); never switch half a collection
                raise GalleryCorrupt(f"collection {collection!r}: {unstaged} template(s) have no new vector")
            conn.execute(
                "UPDATE templates SET model_id = ?, "
                "vector = (SELECT m.vector FROM migration_staging m WHERE m.template_id = templates.id), "
                "chip_template = CASE WHEN chip IS NULL THEN NULL ELSE COALESCE(chip_template, ?) END "
                f"WHERE subject_id IN ({_IN_COLLECTION})",
                (target_model, source_template, cid),
            )
            negatives = conn.execute(f"DELETE FROM negatives WHERE subject_id IN ({_IN_COLLECTION})", (cid,)).rowcount
            # A new generation that no index (in memory here or elsewhere, or a snapshot) can catch up to.
            conn.execute(
                "UPDATE collections SET model_id = ?, dim = ?, generation = generation + 1, "
                "log_since = generation + 1 WHERE id = ?",
                (target_model, int(dim), cid),
            )
            conn.execute("DELETE FROM index_log WHERE collection_id = ?", (cid,))
            conn.execute("DELETE FROM migration_staging WHERE collection_id = ?", (cid,))
        self._index.drop(cid)
        return MigrationSwitch(int(templates), int(subjects), len(missing), int(negatives), late)


def _check_source(conn: sqlite3.Connection, cid: int, collection: str, source_model: str) -> None:
    """Refuse to stage or switch when another process changed the collection's model meanwhile."""
    row = conn.execute("SELECT model_id FROM collections WHERE id = ?", (cid,)).fetchone()
    if row is None:
        raise CollectionNotFound(collection)
    if row[0] != source_model:
        raise GalleryError(
            f"collection {collection!r} now holds {row[0]} faceprints, not {source_model}: another process "
            "changed it during the migration; run migrate again"
        )
