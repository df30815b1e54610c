"""Bulk enrolment: a folder tree of photos analysed by N worker processes (or Ray actors), written to the
gallery by one writer, resumable after an interruption, with progress, rate and ETA on stderr.

Workers do everything that costs CPU (decode, detect, quality gate, embed) with the gallery's own rules
(:func:`faceprint.gallery.enrol` decides which face and whether it is good enough); the parent process is
the only one that touches the gallery, so there is no write contention and one transaction per photo, as
in ``enrol_images``. What is finished goes to a :class:`~faceprint.scale.checkpoint.Checkpoint`; run the
same command again and only the rest is done. Every photo ends up enrolled exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from faceprint.gallery.base import Gallery
from faceprint.gallery.enrol import EnrolReport, ImageOutcome, _one_image
from faceprint.gallery.errors import CollectionNotFound, ContractMismatch
from faceprint.gallery.model import Consent, Subject
from faceprint.liveness import LivenessPolicy, LivenessResult
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.scale.checkpoint import Checkpoint, FileKey, Pending
from faceprint.types import Faceprint

log = logging.getLogger("faceprint.scale")

#: Work items queued ahead per worker: enough to keep every worker busy, few enough to stay small.
QUEUE_PER_WORKER = 2


@dataclass(frozen=True)
class Analysed:
    """A photo that passed the enrolment rules: its faceprint, ready for the writer."""

    faceprint: Faceprint
    faces: int
    sha256: str
    chip: np.ndarray | None = None
    liveness: LivenessResult | None = None


Analysis = ImageOutcome | Analysed
Item = tuple[int, str, str]  # (index, path, label)


def analyse(
    pipeline: Pipeline,
    source: str | bytes,
    label: str,
    keep_chip: bool = False,
    liveness: LivenessPolicy | None = None,
) -> Analysis:
    """One photo through the gallery's enrolment rules (liveness gate included), without the gallery: a
    rejection or a faceprint."""
    result = _one_image(source, label, pipeline, set(), liveness)
    if isinstance(result, ImageOutcome):
        return result
    img, fp, faces, checked = result
    chip = pipeline.chips(img, [fp.detection])[0] if keep_chip and fp.detection is not None else None
    return Analysed(fp, faces, img.sha256 or hashlib.sha256(img.pixels.tobytes()).hexdigest(), chip, checked)


# -- analysers: where the CPU work runs ------------------------------------------------------------------
class Analyser(Protocol):
    def run(self, items: Iterable[Item]) -> Iterator[tuple[int, Analysis]]:
        """Results as they finish (any order), tagged with the item's index."""
        ...

    def close(self) -> None: ...


_WORKER_PIPELINE: Pipeline | None = None
_WORKER_KEEP_CHIPS = False
_WORKER_LIVENESS: LivenessPolicy | None = None


def _init_worker(config: PipelineConfig, keep_chips: bool, liveness: LivenessPolicy | None = None) -> None:
    global _WORKER_PIPELINE, _WORKER_KEEP_CHIPS, _WORKER_LIVENESS
    _WORKER_PIPELINE = Pipeline(config)
    _WORKER_KEEP_CHIPS = keep_chips
    _WORKER_LIVENESS = liveness


def _analyse_in_worker(index: int, path: str, label: str) -> tuple[int, Analysis]:
    assert _WORKER_PIPELINE is not None, "worker not initialised"
    return index, analyse(_WORKER_PIPELINE, path, label, _WORKER_KEEP_CHIPS, _WORKER_LIVENESS)


class ProcessAnalyser:
    """``workers`` spawned processes, each with its own pipeline on one ONNX Runtime thread."""

    def __init__(
        self, workers: int, config: PipelineConfig, keep_chips: bool, liveness: LivenessPolicy | None = None
    ) -> None:
        self.workers = workers
        # spawn, not fork: the parent holds an open gallery and ONNX Runtime thread pools are not fork-safe.
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(replace(config, threads=1), keep_chips, liveness),
        )

    def run(self, items: Iterable[Item]) -> Iterator[tuple[int, Analysis]]:
        todo = iter(items)
        inflight: set[Future[tuple[int, Analysis]]] = set()

        def fill() -> None:
            while len(inflight) < QUEUE_PER_WORKER * self.workers:
                item = next(todo, None)
                if item is None:
                    return
                inflight.add(self._pool.submit(_analyse_in_worker, *item))

        fill()
        while inflight:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                inflight.discard(future)
                yield future.result()
            fill()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayWorker:
    """A Ray actor (wrapped with ``ray.remote`` at run time) holding one pipeline."""

    def __init__(self, config: PipelineConfig, keep_chips: bool, liveness: LivenessPolicy | None = None) -> None:
        self.pipeline = Pipeline(config)
        self.keep_chips = keep_chips
        self.liveness = liveness

    def analyse(self, index: int, data: bytes, label: str) -> tuple[int, Analysis]:
        return index, analyse(self.pipeline, data, label, self.keep_chips, self.liveness)


class RayAnalyser:
    """``workers`` Ray actors, one CPU each. The driver reads each file and sends its bytes, so the
    cluster's nodes need no shared filesystem; only the driver writes the gallery."""

    def __init__(
        self,
        workers: int,
        config: PipelineConfig,
        keep_chips: bool,
        address: str | None,
        liveness: LivenessPolicy | None = None,
    ) -> None:
        import ray

        from faceprint.scale.server import faceprint_env

        self._own_ray = not ray.is_initialized()
        if self._own_ray:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if address:
                kwargs["runtime_env"] = {"env_vars": faceprint_env()}
            ray.init(address=address, **kwargs)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if workers > cpus:
            log.warning("--workers %d but the Ray cluster has %d CPUs: using %d actors", workers, cpus, cpus)
            workers = cpus
        actor = ray.remote(num_cpus=1)(RayWorker)
        self._actors = [actor.remote(replace(config, threads=1), keep_chips, liveness) for _ in range(max(1, workers))]

    def run(self, items: Iterable[Item]) -> Iterator[tuple[int, Analysis]]:
        from ray.util import ActorPool

        pool = ActorPool(self._actors)
        # ActorPool calls the lambda only when an actor is free: files are read just in time.
        yield from pool.map_unordered(
            lambda actor, item: actor.analyse.remote(item[0], Path(item[1]).read_bytes(), item[2]), items
        )

    def close(self) -> None:
        import ray

        for a in self._actors:
            ray.kill(a)
        if self._own_ray:
            ray.shutdown()


# -- progress -------------------------------------------------------------------------------------------
class ProgressReporter:
    """``enrol: 120/1000 photos (20 from an earlier run), 11.8/s, ETA 1m14s, 3 rejected`` on stderr:
    redrawn in place on a terminal, a new line every ``interval`` seconds otherwise (logs, CI)."""

    def __init__(self, total: int, resumed: int, *, stream: TextIO | None = None, interval: float = 2.0) -> None:
        self.total = total
        self.resumed = resumed
        self.done = 0
        self.rejected = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.start = time.monotonic()
        self._first: float | None = None  # the rate is timed from the first result: start-up is not throughput
        self._last = 0.0
        self._shown = -1

    def advance(self, accepted: bool) -> None:
        self.done += 1
        self.rejected += not accepted
        now = time.monotonic()
        if self._first is None:
            self._first = now
        if now - self._last >= self.interval:
            self._last = now
            self._emit(final=False)

    @property
    def rate(self) -> float:
        """Photos per second over this run, once two results give an interval."""
        if self._first is None or self.done < 2:
            return 0.0
        return (self.done - 1) / max(time.monotonic() - self._first, 1e-9)

    def line(self) -> str:
        rate = self.rate
        remaining = self.total - self.resumed - self.done
        eta = _duration(remaining / rate) if rate > 0 else ("0s" if remaining == 0 else "?")
        resumed = f" ({self.resumed} from an earlier run)" if self.resumed else ""
        return (
            f"enrol: {self.resumed + self.done}/{self.total} photos{resumed}, {rate:.1f}/s, ETA {eta}, "
            f"{self.rejected} rejected"
        )

    def _emit(self, *, final: bool) -> None:
        if final and self._shown == self.done and not self.tty:
            return  # the last line already says it
        self._shown = self.done
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._emit(final=True)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


# -- the writer -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BulkOptions:
    workers: int = 1
    use_ray: bool = False
    ray_address: str | None = None
    collection: str = "default"
    consent: Consent | None = None
    expires_at: datetime | None = None
    keep_chips: bool = False
    checkpoint: Path | None = None  # default: default_checkpoint(...)
    progress: bool = True
    liveness: LivenessPolicy | None = None  # the enrolment liveness gate (faceprint.gallery.enrol_images)


class _Writer:
    """The single writer: subjects created on first accepted photo, one transaction per template."""

    def __init__(self, gallery: Gallery, options: BulkOptions) -> None:
        self.gallery = gallery
        self.options = options
        self._subjects: dict[str, Subject] = {}
        self._shas: dict[str, dict[str, int]] = {}
        self._collection_ready = False

    def find(self, name: str) -> Subject | None:
        if name not in self._subjects:
            try:
                found = self.gallery.find_subject(name, collection=self.options.collection)
            except CollectionNotFound:  # nobody is enrolled yet
                found = None
            if found is None:
                return None
            self._subjects[name] = found
        return self._subjects[name]

    def known(self, subject: Subject) -> dict[str, int]:
        """SHA-256 of every photo already enrolled for ``subject`` → its template id."""
        if subject.id not in self._shas:
            templates = self.gallery.list_templates(subject.id, collection=self.options.collection)
            self._shas[subject.id] = {t.source_sha256: t.id for t in templates if t.source_sha256}
        return self._shas[subject.id]

    def store(self, name: str, label: str, result: Analysed) -> ImageOutcome:
        fp = result.faceprint
        if not self._collection_ready:
            self.gallery.ensure_collection(self.options.collection, fp.model_id, fp.dim)
            self._collection_ready = True
        subject = self.find(name)
        if subject is None:
            subject = self.gallery.add_subject(
                name,
                collection=self.options.collection,
                consent=self.options.consent,
                expires_at=self.options.expires_at,
            )
            self._subjects[name] = subject
        known = self.known(subject)
        if result.sha256 in known:
            return ImageOutcome(label, False, ("already enrolled for this subject (same file)",), faces=result.faces)
        chips = None if result.chip is None else [result.chip]
        (template,) = self.gallery.add_templates(
            subject.id, [fp], collection=self.options.collection, source_sha256=[result.sha256], chips=chips
        )
        known[result.sha256] = template.id
        return ImageOutcome(label, True, (), template.id, fp.quality, result.faces, result.liveness)


def default_checkpoint(directory: Path, root: Path, collection: str) -> Path:
    """One checkpoint per (root folder, collection), in ``directory`` (next to the gallery)."""
    ident = hashlib.sha256(f"{root.resolve()}\0{collection}".encode()).hexdigest()[:16]
    return directory / f"enrol-{ident}.jsonl"


def enrol_folders(
    gallery: Gallery,
    root: Path,
    jobs: Sequence[tuple[str, Sequence[Path]]],
    config: PipelineConfig,
    options: BulkOptions,
) -> list[EnrolReport]:
    """Enrol every ``(subject, photos)`` job (photos under ``root``); one report per subject, covering
    the photos finished by earlier runs too. Raises ``KeyboardInterrupt`` as it came, with the progress
    so far safely in the checkpoint."""
    assert options.checkpoint is not None, "give BulkOptions.checkpoint (see default_checkpoint)"
    existing = {c.name: c for c in gallery.list_collections()}.get(options.collection)
    if existing is not None and existing.model_id != config.profile.embedder:
        raise ContractMismatch(options.collection, existing.model_id, config.profile.embedder)
    files = [(name, path, FileKey.of(root, path)) for name, paths in jobs for path in paths]
    checkpoint = Checkpoint(options.checkpoint)
    writer = _Writer(gallery, options)
    outcomes: dict[int, ImageOutcome] = {}
    todo: list[Item] = []
    try:
        for i, (name, path, key) in enumerate(files):
            if key in checkpoint.done:
                outcomes[i] = checkpoint.done[key][1]
                continue
            pending = checkpoint.pending.get(key)
            if pending is not None:
                recovered = _recover(writer, checkpoint, key, name, pending)
                if recovered is not None:
                    outcomes[i] = recovered
                    continue
            todo.append((i, str(path), str(path)))
        progress = ProgressReporter(len(files), len(files) - len(todo)) if options.progress else None
        if todo:
            analyser = _analyser(options, config, len(todo))
            try:
                for i, result in analyser.run(todo):
                    name, path, key = files[i]
                    outcome = _write(writer, checkpoint, key, name, str(path), result)
                    outcomes[i] = outcome
                    if progress is not None:
                        progress.advance(outcome.accepted)
            except KeyboardInterrupt:
                sys.stderr.write(
                    f"\n{len(outcomes)}/{len(files)} photos done and checkpointed in {options.checkpoint}; "
                    "run the same command again to resume\n"
                )
                raise
            finally:
                analyser.close()
        if progress is not None:
            progress.close()
    finally:
        checkpoint.close()
    reports = []
    start = 0
    for name, paths in jobs:
        mine = tuple(outcomes[i] for i in range(start, start + len(paths)) if i in outcomes)
        start += len(paths)
        subject = writer.find(name)
        if subject is not None:
            subject = gallery.get_subject(subject.id, collection=options.collection)
        reports.append(EnrolReport(subject, mine))
    return reports


def _analyser(options: BulkOptions, config: PipelineConfig, n: int) -> Analyser:
    workers = max(1, min(options.workers, n))
    if options.use_ray:
        return RayAnalyser(workers, config, options.keep_chips, options.ray_address, options.liveness)
    return ProcessAnalyser(workers, config, options.keep_chips, options.liveness)


def _write(
    writer: _Writer, checkpoint: Checkpoint, key: FileKey, name: str, label: str, result: Analysis
) -> ImageOutcome:
    if isinstance(result, ImageOutcome):
        checkpoint.finish(key, name, result)
        return result
    planned = ImageOutcome(label, True, (), None, result.faceprint.quality, result.faces)
    checkpoint.writing(key, name, result.sha256, planned)
    outcome = writer.store(name, label, result)
    checkpoint.finish(key, name, outcome)
    return outcome


def _recover(writer: _Writer, checkpoint: Checkpoint, key: FileKey, name: str, pending: Pending) -> ImageOutcome | None:
    """A photo whose run died between ``writing`` and ``done``: if the gallery has its template, the
    write committed — record it as done; otherwise it is analysed again."""
    subject = writer.find(name)
    if subject is None:
        return None
    template_id = writer.known(subject).get(pending.sha256)
    if template_id is None:
        return None
    outcome = replace(pending.outcome, template_id=template_id)
    checkpoint.finish(key, name, outcome)
    return outcome
