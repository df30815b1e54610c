"""Every face of a set of photos, embedded once, with an optional cache so a rerun does not re-detect.

Unlike :mod:`faceprint.evaluation.embedding` (one face per photo), clustering needs all faces of each photo
and their boxes, so it has its own cache: one ``.npz`` with the faces (photo path and sha256, box, vector,
quality) and the photos that gave none (with the reason), keyed by model and detector; entries are reused
by absolute path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceprint.cluster.core import Face, face_id
from faceprint.errors import InvalidImage
from faceprint.image import Image, load_image
from faceprint.pipeline import Pipeline
from faceprint.types import Detection

NO_FACE = "no face found"

Progress = Callable[[list[Path]], Iterable[Path]]


@dataclass(frozen=True)
class FaceSet:
    """The faces found in ``photos`` photos; ``skipped`` maps each photo that gave none to the reason."""

    model_id: str
    detector: str
    faces: tuple[Face, ...]
    skipped: dict[str, str]
    photos: int

    def save(self, path: Path) -> None:
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        dim = self.faces[0].vector.shape[0] if self.faces else 0
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                model_id=self.model_id,
                detector=self.detector,
                paths=np.array([f.path or "" for f in self.faces], dtype=str),
                images=np.array([f.image for f in self.faces], dtype=str),
                boxes=np.array([f.box or (0, 0, 0, 0) for f in self.faces], dtype=np.float64).reshape(-1, 4),
                vectors=np.vstack([f.vector for f in self.faces]) if self.faces else np.zeros((0, dim), np.float32),
                quality=np.array([np.nan if f.quality is None else f.quality for f in self.faces], np.float64),
                skipped=np.array(list(self.skipped), dtype=str),
                reasons=np.array(list(self.skipped.values()), dtype=str),
            )
        tmp.replace(path)  # atomic: an interrupted write leaves the previous cache

    @classmethod
    def load(cls, path: Path) -> FaceSet:
        with np.load(path, allow_pickle=False) as d:
            columns = zip(d["paths"], d["images"], d["boxes"], d["vectors"], d["quality"], strict=True)
            faces = tuple(
                Face(
                    face_id(str(img), box),
                    str(img),
                    np.asarray(vec, np.float32),
                    str(p),
                    (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    None if np.isnan(q) else float(q),
                )
                for p, img, box, vec, q in columns
            )
            skipped = dict(zip((str(k) for k in d["skipped"]), (str(r) for r in d["reasons"]), strict=True))
            photos = len({f.path for f in faces}) + len(skipped)
            return cls(str(d["model_id"]), str(d["detector"]), faces, skipped, photos)


def faces_from_images(
    paths: Sequence[Path | str],
    pipeline: Pipeline,
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
    batch_size: int = 16,
) -> FaceSet:
    """Detect and embed every face of every photo (each distinct path once); unreadable photos and photos
    without a face are listed in ``skipped`` with the reason, never dropped silently."""
    wanted = list(dict.fromkeys(str(Path(p).resolve()) for p in paths))
    by_path: dict[str, list[Face]] = {}
    skipped: dict[str, str] = {}
    if cache is not None and Path(cache).is_file():
        old = FaceSet.load(cache)
        if (old.model_id, old.detector) == (pipeline.model_id, pipeline.detector_name):
            for f in old.faces:
                by_path.setdefault(str(f.path), []).append(f)
            skipped.update({k: v for k, v in old.skipped.items() if v == NO_FACE})
    wanted_set = set(wanted)
    by_path = {k: v for k, v in by_path.items() if k in wanted_set}
    skipped = {k: v for k, v in skipped.items() if k in wanted_set}
    todo = [Path(k) for k in wanted if k not in by_path and k not in skipped]

    batch: list[tuple[Image, list[Detection]]] = []
    batch_paths: list[str] = []

    def flush() -> None:
        if not batch:
            return
        for p, (img, _), prints in zip(batch_paths, batch, pipeline.embed_batch(batch), strict=True):
            by_path[p] = [
                Face(
                    face_id(str(img.sha256), fp.detection.box if fp.detection else None),
                    str(img.sha256),
                    np.asarray(fp.vector, np.float32),
                    p,
                    None if fp.detection is None else fp.detection.box,
                    fp.quality,
                )
                for fp in prints
            ]
        batch.clear()
        batch_paths.clear()

    for path in progress(todo) if progress else todo:
        try:
            image = load_image(path)
        except InvalidImage as exc:
            skipped[str(path)] = exc.reason
            continue
        detections = pipeline.detect(image)
        if not detections:
            skipped[str(path)] = NO_FACE
            continue
        batch.append((image, detections))
        batch_paths.append(str(path))
        if len(batch) >= batch_size:
            flush()
    flush()
    faces = tuple(f for p in wanted for f in by_path.get(p, ()))
    result = FaceSet(pipeline.model_id, pipeline.detector_name, faces, skipped, len(wanted))
    if cache is not None and todo:
        result.save(cache)
    return result
