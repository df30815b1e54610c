"""Detection evaluation: ground-truth readers (WIDER FACE, FDDB, dlib imglab XML) and AP at IoU 0.5.

Formats:

- WIDER FACE ``*_bbx_gt.txt``: image path, face count, then one ``x y w h [blur expression illumination
  invalid occlusion pose]`` line per face (an image with 0 faces still has one all-zero line). Faces marked
  ``invalid`` are *ignored*: neither a miss when undetected nor a false positive when detected.
- FDDB ``*-ellipseList.txt``: image path without extension, face count, then ``major minor angle cx cy 1``
  per face; an ellipse becomes its axis-aligned bounding box. FDDB ellipses run from forehead to chin,
  taller than most detectors' boxes, so AP at IoU 0.5 understates a detector on FDDB.
- dlib imglab XML (``<image file=..><box top left width height [ignore='1']/>``).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceprint.errors import FaceprintError, InvalidImage
from faceprint.evaluation import metrics as m
from faceprint.evaluation.pairs import PairFileError
from faceprint.image import load_image
from faceprint.pipeline import Pipeline

log = logging.getLogger(__name__)
FORMATS = ("auto", "wider", "fddb", "dlib")


@dataclass(frozen=True)
class Annotation:
    image: Path
    boxes: np.ndarray  # N×4 (x1, y1, x2, y2)
    ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def _numbers(fields: list[str]) -> list[float] | None:
    try:
        return [float(f) for f in fields]
    except ValueError:
        return None


def read_wider(path: Path, root: Path) -> list[Annotation]:
    lines = Path(path).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        name = lines[i].strip()
        i += 1
        if not name:
            continue
        if i >= len(lines) or not lines[i].strip().isdigit():
            raise PairFileError(path, i + 1, "expected the face count after the image path")
        count = int(lines[i])
        i += 1
        boxes, ignore = [], []
        for _ in range(count):
            vals = _numbers(lines[i].split()) if i < len(lines) else None
            if vals is None or len(vals) < 4:
                raise PairFileError(path, i + 1, "expected 'x y w h ...' for a face")
            x, y, w, h = vals[:4]
            boxes.append((x, y, x + w, y + h))
            ignore.append((len(vals) >= 8 and vals[7] == 1) or w <= 0 or h <= 0)
            i += 1
        if count == 0 and i < len(lines):  # WIDER writes one all-zero line for an image without faces
            vals = _numbers(lines[i].split())
            if vals is not None and len(vals) >= 4 and not any(vals):
                i += 1
        out.append(Annotation(Path(root) / name, np.array(boxes).reshape(-1, 4), np.array(ignore, bool)))
    return out


def ellipse_box(major: float, minor: float, angle: float, cx: float, cy: float) -> tuple[float, ...]:
    """Axis-aligned bounding box of an ellipse (``angle`` of the major axis in radians)."""
    hw = math.sqrt((major * math.cos(angle)) ** 2 + (minor * math.sin(angle)) ** 2)
    hh = math.sqrt((major * math.sin(angle)) ** 2 + (minor * math.cos(angle)) ** 2)
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def read_fddb(path: Path, root: Path, suffix: str = ".jpg") -> list[Annotation]:
    lines = Path(path).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        name = lines[i].strip()
        i += 1
        if not name:
            continue
        if i >= len(lines) or not lines[i].strip().isdigit():
            raise PairFileError(path, i + 1, "expected the face count after the image path")
        count = int(lines[i])
        i += 1
        boxes = []
        for _ in range(count):
            vals = _numbers(lines[i].split()) if i < len(lines) else None
            if vals is None or len(vals) < 5:
                raise PairFileError(path, i + 1, "expected 'major minor angle cx cy 1' for a face")
            boxes.append(ellipse_box(*vals[:5]))
            i += 1
        image = Path(root) / name
        if not image.suffix:
            image = image.with_name(image.name + suffix)
        out.append(Annotation(image, np.array(boxes).reshape(-1, 4), np.zeros(len(boxes), bool)))
    return out


def read_dlib_xml(path: Path, root: Path | None = None) -> list[Annotation]:
    root = Path(root) if root is not None else Path(path).parent
    tree = ET.parse(path)
    out = []
    for img in tree.iter("image"):
        boxes, ignore = [], []
        for b in img.iter("box"):
            x, y = float(b.get("left", 0)), float(b.get("top", 0))
            boxes.append((x, y, x + float(b.get("width", 0)), y + float(b.get("height", 0))))
            ignore.append(b.get("ignore") == "1")
        out.append(Annotation(root / img.get("file", ""), np.array(boxes).reshape(-1, 4), np.array(ignore, bool)))
    return out


def read_annotations(path: Path, root: Path | None = None, fmt: str = "auto") -> list[Annotation]:
    """Read ground truth; ``auto`` picks dlib for ``.xml`` and FDDB when face lines have 6 fields ending
    in ``1`` (an ellipse), WIDER otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PairFileError(path, None, "file not found")
    if fmt not in FORMATS:
        raise FaceprintError(f"format must be one of {', '.join(FORMATS)}")
    if fmt == "auto":
        if path.suffix.lower() == ".xml":
            fmt = "dlib"
        else:
            lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
            face = next((ln for ln in lines[2:] if len(ln) >= 4 and _numbers(ln)), None)
            fmt = "fddb" if face is not None and len(face) == 6 and face[5] == "1" else "wider"
    base = Path(root) if root is not None else path.parent
    if fmt == "dlib":
        return read_dlib_xml(path, base)
    return read_fddb(path, base) if fmt == "fddb" else read_wider(path, base)


@dataclass(frozen=True)
class DetectionResult:
    images: int
    faces: int
    detections: int
    iou: float
    pr: m.PrecisionRecall
    by_size: list[dict]
    failures: dict[str, str]

    @property
    def recall(self) -> float:
        return float(self.pr.recall[-1]) if self.pr.recall.size else 0.0

    @property
    def precision(self) -> float:
        return float(self.pr.precision[-1]) if self.pr.precision.size else 0.0

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "faces": self.faces,
            "detections": self.detections,
            "iou": self.iou,
            "average_precision": self.pr.average_precision,
            "recall": self.recall,
            "precision": self.precision,
            "miss_rate_by_size": self.by_size,
            "failed_images": self.failures,
        }


Detect = Callable[[np.ndarray], list[tuple[tuple[float, float, float, float], float]]]


def evaluate_detection(
    annotations: list[Annotation],
    pipeline: Pipeline,
    *,
    iou: float = 0.5,
    progress: Callable[[list[Annotation]], Iterable[Annotation]] | None = None,
) -> DetectionResult:
    """Run the pipeline's detector (boxes only, no landmarks) on every annotated image."""
    detector = pipeline.detector
    all_scores, all_tp, sizes, found, failures = [], [], [], [], {}
    n_faces = n_det = 0
    for ann in progress(annotations) if progress else annotations:
        try:
            pixels = load_image(ann.image).pixels
        except InvalidImage as exc:
            failures[str(ann.image)] = exc.reason
            continue
        raw = detector.detect(pixels)
        pred = np.array([b for b, _ in raw], dtype=np.float64).reshape(-1, 4)
        scores = np.array([s for _, s in raw], dtype=np.float64)
        ignore = ann.ignore if ann.ignore.size == len(ann.boxes) else np.zeros(len(ann.boxes), bool)
        truth, ignored = ann.boxes[~ignore], ann.boxes[ignore]
        tp, matched = m.match_detections(truth, pred, scores, iou)
        # Unmatched detections on an ignored face count neither way.
        keep = tp | ~(m.box_iou(pred, ignored).max(axis=1, initial=0.0) >= iou)
        all_scores.append(scores[keep])
        all_tp.append(tp[keep])
        sizes.append(np.sqrt(np.clip(truth[:, 2] - truth[:, 0], 0, None) * np.clip(truth[:, 3] - truth[:, 1], 0, None)))
        found.append(matched)
        n_faces += len(truth)
        n_det += int(keep.sum())
    if not all_scores:
        raise FaceprintError("no annotated image could be read")
    pr = m.precision_recall(np.concatenate(all_scores), np.concatenate(all_tp), n_faces)
    by_size = m.miss_rate_by_size(np.concatenate(sizes), np.concatenate(found))
    return DetectionResult(len(all_scores), n_faces, n_det, iou, pr, by_size, failures)
