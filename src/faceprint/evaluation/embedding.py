"""Embed a set of images once each: one face per image, batched, with an optional cache file.

Evaluation needs one faceprint per photo (the pair lists refer to a photo many times), so every distinct
path is decoded, detected and embedded exactly once. Photos without a usable face are recorded with the
reason, never dropped silently. The cache is an explicit ``.npz`` file chosen by the caller (never written
next to the photos); it is keyed by model and detector, and entries are reused by absolute path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceprint.errors import FaceprintError, InvalidImage
from faceprint.image import Image, load_image
from faceprint.pipeline import Pipeline
from faceprint.types import Detection

log = logging.getLogger(__name__)

FACE_CHOICES = ("largest", "centre")
NO_FACE = "no face found"

Progress = Callable[[list[Path]], Iterable[Path]]


@dataclass(frozen=True)
class Embeddings:
    """One unit vector per image that had a face; ``failures`` maps the others to the reason."""

    model_id: str
    detector: str
    keys: tuple[str, ...]
    vectors: np.ndarray  # len(keys) × dim, float32, L2-normalised
    failures: dict[str, str]
    # Per key: the quality score of the face used (NaN: not recorded, e.g. an older cache), how many faces the
    # photo holds (0: not recorded), and the quality gate's reasons for the faces that fail it.
    quality: np.ndarray | None = None
    faces: np.ndarray | None = None
    rejections: dict[str, str] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def vector(self, path: Path | str) -> np.ndarray | None:
        i = self.index().get(key(path))
        return None if i is None else self.vectors[i]

    def save(self, path: Path) -> None:
        with open(path, "wb") as fh:  # a file object: numpy would append ".npz" to a bare name
            np.savez(
                fh,
                model_id=self.model_id,
                detector=self.detector,
                keys=np.array(self.keys, dtype=str),
                vectors=self.vectors,
                failed=np.array(list(self.failures), dtype=str),
                reasons=np.array(list(self.failures.values()), dtype=str),
                quality=self.qualities(),
                faces=self.face_counts(),
                rejected=np.array(list(self.rejections), dtype=str),
                rejected_reasons=np.array(list(self.rejections.values()), dtype=str),
            )

    def qualities(self) -> np.ndarray:
        return np.full(len(self.keys), np.nan, np.float32) if self.quality is None else self.quality

    def face_counts(self) -> np.ndarray:
        return np.zeros(len(self.keys), np.int32) if self.faces is None else self.faces

    @classmethod
    def load(cls, path: Path) -> Embeddings:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                str(data["model_id"]),
                str(data["detector"]),
                tuple(str(k) for k in data["keys"]),
                np.asarray(data["vectors"], dtype=np.float32),
                dict(zip((str(k) for k in data["failed"]), (str(r) for r in data["reasons"]), strict=True)),
                np.asarray(data["quality"], np.float32) if "quality" in data else None,
                np.asarray(data["faces"], np.int32) if "faces" in data else None,
                dict(zip((str(k) for k in data["rejected"]), (str(r) for r in data["rejected_reasons"]), strict=True))
                if "rejected" in data
                else {},
            )


def key(path: Path | str) -> str:
    return str(Path(path).resolve())


def choose_face(detections: Sequence[Detection], image: Image, face: str) -> Detection:
    """``largest``: the largest box; ``centre``: the box whose centre is nearest the image centre (for
    datasets such as LFW where the labelled person is centred and others may be larger)."""
    if face == "largest":
        return max(detections, key=lambda d: d.area)
    cx, cy = image.width / 2, image.height / 2
    return min(detections, key=lambda d: ((d.box[0] + d.box[2]) / 2 - cx) ** 2 + ((d.box[1] + d.box[3]) / 2 - cy) ** 2)


def embed_images(
    paths: Iterable[Path],
    pipeline: Pipeline,
    *,
    face: str = "largest",
    batch_size: int = 32,
    cache: Path | None = None,
    progress: Progress | None = None,
    checkpoint: int = 2000,
) -> Embeddings:
    """Embed each distinct path once (see the module docstring)."""
    if face not in FACE_CHOICES:
        raise FaceprintError(f"face must be one of {', '.join(FACE_CHOICES)}, got {face!r}")
    detector = cache_label(pipeline, face)
    wanted = list(dict.fromkeys(key(p) for p in paths))
    rows: dict[str, _Row] = {}
    failures: dict[str, str] = {}
    if cache is not None and Path(cache).is_file():
        old = Embeddings.load(cache)
        if old.model_id == pipeline.model_id and old.detector == detector:
            known = old.index()
            quality, faces = old.qualities(), old.face_counts()
            for k in wanted:
                if k in known:
                    i = known[k]
                    rows[k] = _Row(old.vectors[i], float(quality[i]), int(faces[i]), old.rejections.get(k, ""))
                elif k in old.failures and old.failures[k] == NO_FACE:
                    failures[k] = NO_FACE
            log.info("cache %s: %d of %d images already embedded", cache, len(rows), len(wanted))
        else:
            log.warning("cache %s was made with %s/%s; ignoring it", cache, old.model_id, old.detector)
    done = set(rows) | set(failures)
    todo = [Path(k) for k in wanted if k not in done]

    batch: list[tuple[Image, list[Detection]]] = []
    batch_keys: list[tuple[str, int]] = []

    def flush() -> None:
        if not batch:
            return
        for (k, n_faces), prints in zip(batch_keys, pipeline.embed_batch(batch), strict=True):
            q = prints[0].extra["quality"]
            rows[k] = _Row(np.asarray(prints[0].vector, np.float32), float(q.score), n_faces, "; ".join(q.reasons))
        batch.clear()
        batch_keys.clear()

    started, n = time.perf_counter(), 0
    for path in progress(todo) if progress else todo:
        k = str(path)
        try:
            image = load_image(path)
        except InvalidImage as exc:
            failures[k] = exc.reason
            continue
        detections = pipeline.detect(image)
        if not detections:
            failures[k] = NO_FACE
        else:
            batch.append((image, [choose_face(detections, image, face)]))
            batch_keys.append((k, len(detections)))
            if len(batch) >= batch_size:
                flush()
        n += 1
        if n % 500 == 0:
            rate = n / (time.perf_counter() - started)
            log.info("embedded %d/%d images (%.1f/s, %.0f s left)", n, len(todo), rate, (len(todo) - n) / rate)
        if cache is not None and n % checkpoint == 0:
            flush()  # a long run that is interrupted keeps what it has done
            _save_merged(cache, _collect(pipeline.model_id, detector, rows, failures))
    flush()
    result = _collect(pipeline.model_id, detector, rows, failures)
    if cache is not None and todo:
        _save_merged(cache, result)
    return result


def cache_label(pipeline: Pipeline, face: str) -> str:
    """What, besides the model, decides a photo's embedding: the detector, the face rule, the mirrored chip
    and the precision (``detector/face[/mirror][/int8]``; a cache made otherwise is ignored)."""
    label = f"{pipeline.detector_name}/{face}" + ("/mirror" if pipeline.profile.mirror else "")
    return label if pipeline.config.precision == "fp32" else f"{label}/{pipeline.config.precision}"


@dataclass(frozen=True)
class _Row:
    vector: np.ndarray
    quality: float
    faces: int
    rejection: str


def _collect(model_id: str, detector: str, rows: dict[str, _Row], failures: dict[str, str]) -> Embeddings:
    keys = tuple(rows)
    dim = next(iter(rows.values())).vector.shape[0] if rows else 0
    matrix = np.vstack([rows[k].vector for k in keys]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return Embeddings(
        model_id,
        detector,
        keys,
        matrix,
        dict(failures),
        np.array([rows[k].quality for k in keys], np.float32),
        np.array([rows[k].faces for k in keys], np.int32),
        {k: rows[k].rejection for k in keys if rows[k].rejection},
    )


def _rows(e: Embeddings) -> dict[str, _Row]:
    quality, faces = e.qualities(), e.face_counts()
    return {
        k: _Row(e.vectors[i], float(quality[i]), int(faces[i]), e.rejections.get(k, "")) for i, k in enumerate(e.keys)
    }


def _save_merged(cache: Path, new: Embeddings) -> None:
    merged = _merge(Embeddings.load(cache), new) if Path(cache).is_file() else new
    tmp = Path(cache).with_name(Path(cache).name + ".tmp")
    merged.save(tmp)
    tmp.replace(cache)  # atomic: a crash mid-write leaves the previous cache intact


def _merge(old: Embeddings, new: Embeddings) -> Embeddings:
    if (old.model_id, old.detector) != (new.model_id, new.detector):
        return new
    rows = {**_rows(old), **_rows(new)}
    failures = {k: v for k, v in {**old.failures, **new.failures}.items() if k not in rows}
    return _collect(new.model_id, new.detector, rows, failures)
