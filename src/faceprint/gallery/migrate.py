"""Re-embedding a collection with another model from the chips kept at enrolment (``faceprint migrate``).

A collection is pinned to one embedding model. Templates enrolled with ``--keep-chips`` keep their aligned
face chip (encrypted), so a collection can move to a new model without the original photos:

1. :func:`plan_migration` checks everything before anything is written: the target is a known, installed
   embedder; every template has a chip (else :class:`~faceprint.gallery.errors.MissingChips`, unless
   ``drop_missing``); the stored chips can be re-cut for the target's chip template.
2. :func:`run_migration` embeds the chips batch by batch and *stages* the new vectors (each batch committed);
   searches keep using the current model meanwhile. One transaction then swaps every vector, the
   collection's model and dimension, and invalidates the vector index. Killed at any point, the collection
   is either entirely on the old model or entirely on the new one; a new run resumes from what was staged.

Chips are cut for the template of the model that enrolled them (dlib: 150 px, padding 0.25, dlib's 5 points;
ArcFace: 112 px, eye centres, nose tip, mouth corners). Such a chip shows the canonical face with its
landmarks at the template's points, so it is re-cut for another template by the usual similarity alignment
with those points as its landmarks (:func:`faceprint.align.templates.reframe_chips`). Where the target chip
shows more of the head than the stored one, the missing border is black, as for a face at a photo's edge
(dlib 150 → ArcFace 112: 24% of the chip, mostly forehead; see docs/gallery.md for its measured cost).
The original chip is kept unchanged (with the template it was cut for), so repeated migrations never
resample a resampled chip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faceprint.align.templates import reframe_chips, reframe_coverage, template_by_name
from faceprint.embed.base import embed_chips
from faceprint.errors import CalibrationMissing, ModelError
from faceprint.factory import load_embedder, resolve_profile
from faceprint.gallery.base import Gallery, Migratable
from faceprint.gallery.errors import GalleryError, MigrationUnsupported, MissingChips, SubjectExists
from faceprint.gallery.model import PendingChip
from faceprint.matching import shipped_calibration
from faceprint.models.registry import ModelNotInstalledHere, ModelRegistry
from faceprint.models.spec import ModelSpec
from faceprint.types import Detection, Faceprint

#: A stored chip must cover at least this fraction of the target model's chip (the rest is filled black).
#: dlib 150 → ArcFace 112 covers 76% and costs about 0.01 of cosine score (docs/gallery.md); below this the
#: re-embedded templates would be guesses, and the subjects should be re-enrolled from photos instead.
MIN_CHIP_COVERAGE = 0.6
DEFAULT_BATCH = 64

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class MigrationPlan:
    """What :func:`run_migration` will do for one collection; made by :func:`plan_migration`."""

    collection: str
    source_model: str
    target_model: str
    dim: int  # of the target model
    templates: int
    subjects: int
    missing_chips: int  # templates without a chip (deleted by the migration when drop_missing)
    subjects_missing_chips: list[str]
    staged: int  # templates already re-embedded by an interrupted run
    negatives: int  # corrections recorded with the old model: deleted (they keep no chip)
    target_template: str
    legacy_template: str | None  # the template of chips that do not record one (the source model's)
    coverage: dict[str, float] = field(default_factory=dict)  # stored chip template → coverage of the target's
    notes: list[str] = field(default_factory=list)

    @property
    def noop(self) -> bool:
        return self.source_model == self.target_model

    @property
    def to_embed(self) -> int:
        return self.templates - self.missing_chips


@dataclass(frozen=True)
class MigrationReport:
    collection: str
    source_model: str
    target_model: str
    templates: int  # re-embedded (all templates of the collection now)
    subjects: int
    resumed: int  # of which embedded by an earlier, interrupted run
    dropped_templates: int
    dropped_negatives: int
    seconds: float
    coverage: dict[str, float]
    notes: list[str]
    noop: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "from": self.source_model,
            "to": self.target_model,
            "migrated": not self.noop,
            "templates": self.templates,
            "subjects": self.subjects,
            "resumed": self.resumed,
            "dropped_templates": self.dropped_templates,
            "dropped_negatives": self.dropped_negatives,
            "seconds": round(self.seconds, 3),
            "chip_coverage": {k: round(v, 4) for k, v in self.coverage.items()},
            "notes": list(self.notes),
        }


def _migratable(gallery: Gallery) -> Migratable:
    """The gallery as :class:`Migratable`; any other backend is refused with what to do instead."""
    if isinstance(gallery, Migratable):
        return gallery
    backend = getattr(gallery, "backend_name", type(gallery).__name__)
    if not getattr(gallery, "keeps_chips", True):
        raise MigrationUnsupported(
            f"migrate is not possible on the {backend} backend: it keeps no face chips, so its templates can only "
            "be re-enrolled from the photos (into a new collection, or a new gallery)"
        )
    raise MigrationUnsupported(
        f"migrate is not supported on the {backend} backend yet (only on the embedded gallery); re-enrol the "
        "subjects from their photos into a new collection made with the new model (an export carries no chips)"
    )


def _target_spec(registry: ModelRegistry, model_id: str) -> ModelSpec:
    spec = registry.get(model_id)  # unknown → ModelError listing the known ones
    if spec.task != "embedder":
        embedders = ", ".join(i for i, s in registry.specs().items() if s.task == "embedder")
        raise ModelError(f"model {model_id!r} is a {spec.task}, not an embedder; migrate to one of: {embedders}")
    status = registry.status(spec)
    if not status.available:
        raise ModelNotInstalledHere(model_id, status.how_to_get)
    return spec


def plan_migration(
    gallery: Gallery,
    collection: str,
    target_model: str,
    *,
    registry: ModelRegistry | None = None,
    drop_missing: bool = False,
) -> MigrationPlan:
    """Check that ``collection`` can move to ``target_model`` and say what it involves; writes nothing.

    Raises :class:`MissingChips` when templates lack a chip (unless ``drop_missing``),
    :class:`MigrationUnsupported` on a backend that cannot migrate, :class:`~faceprint.errors.ModelError` for
    an unknown, uninstalled or non-embedder model, and :class:`GalleryError` when the stored chips cannot be
    re-cut for the target model's chip template.
    """
    store = _migratable(gallery)
    registry = registry or ModelRegistry()
    spec = _target_spec(registry, target_model)
    assert spec.template is not None and spec.output_dim is not None  # embedder specs always have them
    counts = store.migration_counts(collection, target_model)
    coll = counts.collection
    plan_args: dict[str, Any] = {
        "collection": collection,
        "source_model": coll.model_id,
        "target_model": target_model,
        "dim": int(spec.output_dim),
        "templates": counts.templates,
        "subjects": counts.subjects,
        "missing_chips": counts.missing_chips,
        "subjects_missing_chips": counts.subjects_missing_chips,
        "staged": counts.staged,
        "negatives": counts.negatives,
        "target_template": spec.template,
    }
    if coll.model_id == target_model:
        return MigrationPlan(**plan_args, legacy_template=None)
    if counts.missing_chips and not drop_missing:
        names = counts.subjects_missing_chips
        raise MissingChips(collection, counts.missing_chips, counts.templates, names[:10], len(names))
    notes: list[str] = []
    legacy = None
    if None in counts.chip_templates:
        try:
            legacy = registry.get(coll.model_id).template
        except ModelError:
            raise GalleryError(
                f"collection {collection!r}: its chips were cut for model {coll.model_id!r}, which this "
                "installation does not know, so their geometry is unknown; add that model's spec back "
                "(`faceprint models add`) and run migrate again"
            ) from None
    coverage: dict[str, float] = {}
    for name in {legacy if t is None else t for t in counts.chip_templates}:
        assert name is not None
        coverage[name] = reframe_coverage(name, spec.template)
        if coverage[name] < MIN_CHIP_COVERAGE:
            raise GalleryError(
                f"collection {collection!r}: the stored chips ({name}) show only {coverage[name]:.0%} of what "
                f"{target_model} needs ({spec.template}); below {MIN_CHIP_COVERAGE:.0%} the new templates would "
                "not be trustworthy: re-enrol the subjects from their photos instead"
            )
        if coverage[name] < 1:
            notes.append(
                f"chips cut for {name} are re-cut for {spec.template}: {1 - coverage[name]:.0%} of each new chip "
                "lies outside the stored chip and is filled black (expect slightly lower scores than a fresh "
                "enrolment; re-enrol from photos where that matters)"
            )
    if counts.missing_chips:
        notes.append(
            f"{counts.missing_chips} template(s) without a chip will be deleted (--drop-missing); "
            f"re-enrol from photos: {', '.join(counts.subjects_missing_chips[:10])}"
            + (" …" if len(counts.subjects_missing_chips) > 10 else "")
        )
    if counts.negatives:
        notes.append(
            f"{counts.negatives} correction(s) (`subjects not`) were recorded with {coll.model_id} and keep no "
            "chip: they are deleted; record them again with the new model if the false matches recur"
        )
    try:
        shipped_calibration(target_model)
    except CalibrationMissing:
        notes.append(
            f"faceprint ships no calibration table for {target_model}: identify will need --threshold "
            "(or a calibration made with `faceprint calibrate`)"
        )
    return MigrationPlan(**plan_args, legacy_template=legacy, coverage=coverage, notes=notes)


def run_migration(
    gallery: Gallery,
    plan: MigrationPlan,
    *,
    registry: ModelRegistry | None = None,
    embedder: Any = None,
    device: str = "cpu",
    threads: int | None = None,
    batch: int = DEFAULT_BATCH,
    drop_missing: bool = False,
    on_progress: ProgressFn | None = None,
) -> MigrationReport:
    """Carry out ``plan`` (see the module docstring); ``on_progress(done, total)`` after every batch.

    ``embedder``: an already loaded embedder of the target model (else it is loaded from the registry).
    """
    store = _migratable(gallery)
    started = time.perf_counter()
    if plan.noop:
        return MigrationReport(
            plan.collection, plan.source_model, plan.target_model, 0, plan.subjects, 0, 0, 0,
            time.perf_counter() - started, {}, [], noop=True,
        )  # fmt: skip
    if batch < 1:
        raise GalleryError(f"batch must be at least 1, got {batch}")
    if plan.missing_chips and not drop_missing:
        names = plan.subjects_missing_chips
        raise MissingChips(plan.collection, plan.missing_chips, plan.templates, names[:10], len(names))
    registry = registry or ModelRegistry()
    if embedder is None:
        embedder = load_embedder(registry, plan.target_model, device=device, threads=threads)
    if getattr(embedder, "model_id", plan.target_model) != plan.target_model:
        raise GalleryError(f"the embedder given is {embedder.model_id}, not {plan.target_model}")
    target = plan.target_template
    mirror = resolve_profile(registry, plan.target_model).mirror  # as the pipeline embeds for this model
    if template_by_name(target).size != embedder.chip_size:
        raise ModelError(
            f"model {plan.target_model!r}: template {target} does not fit its {embedder.chip_size} px input"
        )

    def embed(pending: list[PendingChip]) -> np.ndarray:
        """New vectors for ``pending`` (in order): chips grouped by the template they were cut for."""
        out = np.empty((len(pending), plan.dim), dtype=np.float32)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pending):
            source = p.chip_template or plan.legacy_template
            assert source is not None
            groups.setdefault(source, []).append(i)
        for source, rows in groups.items():
            try:
                chips = np.stack([pending[i].chip for i in rows])
                recut = reframe_chips(chips, source, target)
            except (ValueError, ModelError) as exc:
                bad = pending[rows[0]]
                raise GalleryError(
                    f"the stored chips of subject {bad.subject!r} (template {bad.template_id}, …) do not have "
                    f"the shape of template {source}: {exc}"
                ) from None
            out[rows] = embed_chips(embedder, recut, mirror=mirror)
        return out

    store.start_migration(plan.collection, plan.target_model)
    resumed = store.migration_counts(plan.collection, plan.target_model).staged
    total = plan.to_embed
    done = resumed
    if on_progress:
        on_progress(done, total)
    while pending := store.migration_pending(plan.collection, plan.target_model, batch):
        vectors = embed(pending)
        store.stage_migration(
            plan.collection,
            plan.source_model,
            plan.target_model,
            [(p.template_id, p.subject_id, v) for p, v in zip(pending, vectors, strict=True)],
        )
        done += len(pending)
        if on_progress:
            on_progress(min(done, total), total)
    switch = store.finish_migration(
        plan.collection,
        plan.source_model,
        plan.target_model,
        plan.dim,
        source_template=plan.legacy_template,
        drop_missing=drop_missing,
        embed=embed,
        batch=batch,
    )
    if on_progress:
        on_progress(switch.templates, switch.templates)
    return MigrationReport(
        plan.collection,
        plan.source_model,
        plan.target_model,
        switch.templates,
        switch.subjects,
        resumed,
        switch.dropped_templates,
        switch.dropped_negatives,
        time.perf_counter() - started,
        dict(plan.coverage),
        list(plan.notes),
    )


def migrate_collection(
    gallery: Gallery,
    collection: str,
    target_model: str,
    *,
    registry: ModelRegistry | None = None,
    drop_missing: bool = False,
    **options: Any,
) -> MigrationReport:
    """:func:`plan_migration` then :func:`run_migration` (``options``: embedder, device, threads, batch,
    on_progress)."""
    plan = plan_migration(gallery, collection, target_model, registry=registry, drop_missing=drop_missing)
    return run_migration(gallery, plan, registry=registry, drop_missing=drop_missing, **options)


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    model_id: str
    subjects: int
    templates: int
    without_chip: int  # templates copied without a chip: a migration of the copy needs --drop-missing

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def copy_collection(gallery: Gallery, source: str, target: str) -> CopyReport:
    """Copy ``source`` into a new collection ``target`` on the same model: its protection policy (default
    retention, consent required, purposes), subjects (name, metadata, consent, retention) and templates
    (vector, quality, box, photo hash and kept chip). Migrate the copy to another model (:func:`migrate_collection`)
    to get a shadow copy for a canary while ``source`` keeps serving. Corrections (`subjects not`) are not copied.
    ``target`` must not exist yet."""
    store = _migratable(gallery)
    coll = gallery.get_collection(source)
    if any(c.name == target for c in gallery.list_collections()):
        raise GalleryError(f"collection {target!r} exists already: delete it or choose another name")
    gallery.ensure_collection(target, coll.model_id, coll.dim)
    policy = gallery.collection_policy(source)  # the copy protects people as the source does (issue 18)
    gallery.set_collection_policy(
        target, retention=policy.retention, consent_required=policy.consent_required, purposes=policy.purposes
    )
    subjects = templates = without_chip = 0
    cursor: str | None = None
    with gallery.bulk():
        while True:
            page = gallery.list_subjects(collection=source, limit=500, cursor=cursor)
            for subject in page.items:
                try:
                    copy = gallery.add_subject(
                        subject.name,
                        collection=target,
                        metadata=subject.metadata,
                        consent=subject.consent,
                        expires_at=subject.expires_at,
                    )
                except SubjectExists:  # cannot happen in a new collection; say so plainly if it does
                    raise GalleryError(f"collection {target!r}: subject {subject.name!r} appeared twice") from None
                vectors = gallery.template_vectors(subject.id, collection=source)
                for t in gallery.list_templates(subject.id, collection=source):
                    chip = store.template_chip(t.id) if t.has_chip else None
                    fp = Faceprint(
                        vector=vectors[t.id],
                        model_id=coll.model_id,
                        detection=None if t.box is None else Detection(box=t.box, score=1.0),
                        quality=t.quality,
                    )
                    gallery.add_templates(
                        copy.id,
                        [fp],
                        collection=target,
                        source_sha256=[t.source_sha256],
                        chips=None if chip is None else [chip],
                    )
                    templates += 1
                    without_chip += chip is None
                subjects += 1
            cursor = page.next_cursor
            if cursor is None:
                break
    return CopyReport(source, target, coll.model_id, subjects, templates, without_chip)
