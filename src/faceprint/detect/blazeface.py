"""BlazeFace (mediapipe's short- and full-range face detectors), converted from TFLite to ONNX.

One pass of a small SSD-style network over the whole photo, letterboxed to the input square (128×128 short
range, 192×192 full range; grey bars keep the aspect ratio, as mediapipe's ``ImageToTensorCalculator`` with
``keep_aspect_ratio``). Decoding follows mediapipe's calculator options for these graphs
(``face_detection_short_range.pbtxt`` / ``face_detection_full_range.pbtxt``):

* anchors (``SsdAnchorsCalculator``, ``fixed_anchor_size``): one cell grid per stride, centres at
  ``(i + 0.5) / grid``, unit size; short range strides 8, 16, 16, 16 with 2 anchors per cell and layer
  (16×16×2 + 8×8×6 = 896), full range stride 4 with one (48×48 = 2304). The spec's ``[options]`` give the
  strides and anchors per cell; the count is checked against the graph's outputs at load;
* per anchor 16 regressors: box centre offset and size, then 6 keypoints (x, y), all in input pixels
  relative to the anchor centre (``x_scale = input size``); the score is ``sigmoid(clip(logit, ±100))``;
* weighted non-maximum suppression (mediapipe's ``WEIGHTED`` algorithm): the best remaining box and every box
  overlapping it by IoU > ``nms_iou`` are merged into their score-weighted mean (box and keypoints); the
  merged detection keeps the best score.

Keypoints: the face's right eye, left eye, nose tip, mouth centre, right and left ear tragion (the model card's
order; "right" is the person's, i.e. image left for a frontal face). :func:`arcface5_from_keypoints` maps them to
the ``arcface5`` scheme (eye centres, nose tip, mouth corners): the mouth corners are not given, so they are
placed at the mouth centre ± 0.375 × the eye-to-eye vector, lifted by 0.062 eye distances across it (where the
face mesh puts the lip corners on LFW training photos, see :data:`MOUTH_HALF_WIDTH`), which keeps the eye axis'
rotation and scale.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from faceprint.detect.base import RawDetection
from faceprint.detect.boxes import iou_one
from faceprint.errors import InvalidImage, ModelError
from faceprint.models.onnx_model import OnnxModel
from faceprint.models.spec import ModelSpec

__all__ = [
    "BlazeFaceDetector",
    "BlazeFaceFallback",
    "BlazeFaceKeypoints",
    "arcface5_from_keypoints",
    "ssd_anchors",
    "weighted_nms",
]

NUM_KEYPOINTS = 6
#: Where the mouth corners lie from BlazeFace's mouth centre, in eye distances along the eye axis and across
#: it (up is negative): the median over 1,500 LFW peopleDevTrain photos of the face mesh's lip corners
#: (``faceprint.align.facemesh``) seen from the keypoints — short range (−0.360, −0.063) / (0.388, −0.073),
#: full range (−0.370, −0.056) / (0.390, −0.058). (The ArcFace template's own mouth is 0.828 eye distances wide.)
MOUTH_HALF_WIDTH = 0.375
MOUTH_LIFT = 0.062
SCORE_CLIP = 100.0
#: Source pixels per input pixel (and axis) the letterbox averages at least (see BlazeFaceDetector.letterbox).
PRESAMPLE = 4


def ssd_anchors(size: int, strides: list[int], per_cell: list[int]) -> np.ndarray:
    """Anchor centres (A×2, x and y in [0, 1]) in mediapipe's order: per stride group (consecutive layers
    with the same stride share a grid), cell by cell row-major, the group's anchors of each cell together."""
    if len(strides) != len(per_cell) or not strides:
        raise ModelError("BlazeFace anchors: anchor_strides and anchors_per_cell must be lists of equal length")
    out = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        count = 0
        while layer < len(strides) and strides[layer] == stride:
            count += per_cell[layer]
            layer += 1
        grid = -(-size // stride)
        ys, xs = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(centres, count, axis=0))
    return np.concatenate(out).astype(np.float32)


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mediapipe's weighted NMS: ``(boxes K×4, keypoints K×P×2, scores K)``, best first (see the module)."""
    order = np.argsort(-scores, kind="stable")
    out_b, out_k, out_s = [], [], []
    while order.size:
        best = order[0]
        overlap = iou_one(boxes[best], boxes[order]) > iou
        overlap[0] = True
        group = order[overlap]
        weights = scores[group][:, None]
        total = weights.sum()
        out_b.append((boxes[group] * weights).sum(axis=0) / total)
        out_k.append((keypoints[group] * weights[:, :, None]).sum(axis=0) / total)
        out_s.append(scores[best])
        order = order[~overlap]
    if not out_s:
        return np.zeros((0, 4), np.float32), np.zeros((0, keypoints.shape[1], 2), np.float32), np.zeros(0, np.float32)
    return np.stack(out_b), np.stack(out_k), np.asarray(out_s, np.float32)


def arcface5_from_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """N×6×2 BlazeFace keypoints → N×5×2 ``arcface5`` points: image-left eye, image-right eye, nose tip,
    image-left and image-right mouth corner (derived, see the module docstring)."""
    k = np.asarray(keypoints, dtype=np.float64)
    eye_a, eye_b = k[:, 0], k[:, 1]  # the face's right eye is image left for a frontal face
    swap = eye_a[:, 0] > eye_b[:, 0]  # a face upside down or seen mirrored: keep image left first
    left = np.where(swap[:, None], eye_b, eye_a)
    right = np.where(swap[:, None], eye_a, eye_b)
    axis = right - left
    half = MOUTH_HALF_WIDTH * axis
    lift = MOUTH_LIFT * np.stack([axis[:, 1], -axis[:, 0]], axis=1)  # the eye axis turned a quarter: "up"
    mouth = k[:, 3] + lift
    return np.stack([left, right, k[:, 2], mouth - half, mouth + half], axis=1)


def _rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidImage(what, "expected a uint8 NumPy array")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise InvalidImage(what, f"expected an H×W×3 RGB or H×W grey array, got shape {image.shape}")
    return image


class BlazeFaceDetector(OnnxModel):
    """Implements :class:`faceprint.detect.base.Detector`; :meth:`detect_keypoints` also gives the 6 keypoints.

    ``path`` is the converted ONNX graph (see :func:`faceprint.factory.load_detector`), whose outputs are
    TFLite's: regressors ``1×A×16`` and scores ``1×A×1``.
    """

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None,
                 min_score: float | None = None) -> None:  # fmt: skip
        super().__init__(spec, path, device=device, threads=threads)
        if self.input.width != self.input.height:
            raise ModelError(f"model {spec.id!r}: a BlazeFace input is square, the spec says "
                             f"{self.input.width}×{self.input.height}")  # fmt: skip
        self.size = self.input.width
        opts = spec.options
        self.min_score = float(min_score if min_score is not None else opts.get("score_threshold", 0.5))
        self.nms_iou = float(opts.get("nms_iou", 0.3))
        strides = [int(v) for v in opts.get("anchor_strides", [])]
        self.anchors = ssd_anchors(self.size, strides, [int(v) for v in opts.get("anchors_per_cell", [])])
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        by_width = {int(s[-1]): name for name, s in shapes.items()}
        if set(by_width) != {4 + 2 * NUM_KEYPOINTS, 1} or any(s[1] != len(self.anchors) for s in shapes.values()):
            raise ModelError(f"model {spec.id!r}: expected outputs N×{len(self.anchors)}×16 and "
                             f"N×{len(self.anchors)}×1 (the spec's anchors), {path.name} has {shapes}")  # fmt: skip
        self.regressor_output = by_width[16]
        self.score_output = by_width[1]
        self._lock = threading.Lock()

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """The image fitted into the input square with black bars: ``(square, scale, pad_x, pad_y)``;
        square pixel ``p`` is image pixel ``(p - pad) / scale``."""
        h, w = image.shape[:2]
        scale = self.size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if scale < 1:
            # OpenCV's area average costs ~2 ms a megapixel: on a large photo, first keep every step-th pixel
            # so that at least PRESAMPLE source pixels per output pixel and axis remain to be averaged
            step = int(1 / (scale * PRESAMPLE))
            source = image[::step, ::step] if step >= 2 else image
            resized = cv2.resize(source, (nw, nh), interpolation=cv2.INTER_AREA)
        else:
            resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        pad_x, pad_y = (self.size - nw) // 2, (self.size - nh) // 2
        square = np.zeros((self.size, self.size, 3), np.uint8)
        square[pad_y : pad_y + nh, pad_x : pad_x + nw] = resized
        return square, scale, float(pad_x), float(pad_y)

    def raw(self, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode N input squares (N×S×S×3 uint8): boxes N×A×4 (x1, y1, x2, y2) and keypoints N×A×6×2 in
        square pixels, scores N×A, before any threshold."""
        outputs = dict(zip(self.output_names, self.run(self.to_tensor(squares)), strict=True))
        reg = outputs[self.regressor_output].astype(np.float32)
        logits = np.clip(outputs[self.score_output][..., 0].astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
        scores = 1.0 / (1.0 + np.exp(-logits))
        centres = self.anchors * self.size  # offsets are in input pixels around the anchor centre
        cxy = reg[..., 0:2] + centres
        half = reg[..., 2:4] / 2
        boxes = np.concatenate([cxy - half, cxy + half], axis=-1)
        keypoints = reg[..., 4:].reshape(*reg.shape[:-1], NUM_KEYPOINTS, 2) + centres[:, None, :]
        return boxes, keypoints, scores

    def detect_keypoints(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in ``image`` (RGB or grey uint8): boxes K×4, keypoints K×6×2 (image pixels), scores K, best
        first."""
        pixels = _rgb(image)
        square, scale, pad_x, pad_y = self.letterbox(pixels)
        with self._lock:
            boxes, keypoints, scores = self.raw(square[None])
        keep = scores[0] >= self.min_score
        boxes, keypoints, scores = weighted_nms(boxes[0][keep], keypoints[0][keep], scores[0][keep], self.nms_iou)
        pad = np.array([pad_x, pad_y], np.float64)
        boxes = ((boxes.reshape(-1, 2, 2) - pad) / scale).reshape(-1, 4)
        keypoints = (keypoints - pad) / scale
        h, w = pixels.shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h])
        return boxes, keypoints, scores

    def detect_landmarks(self, image: np.ndarray) -> tuple[list[RawDetection], np.ndarray]:
        """:meth:`detect` plus each face's ``arcface5`` points (K×5×2), from the same pass."""
        return _with_arcface5(*self.detect_keypoints(image))

    def detect(self, image: np.ndarray) -> list[RawDetection]:
        return self.detect_landmarks(image)[0]


def _with_arcface5(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray
) -> tuple[list[RawDetection], np.ndarray]:
    raw = [(tuple(float(v) for v in b), float(s)) for b, s in zip(boxes, scores, strict=True)]
    return raw, arcface5_from_keypoints(keypoints)  # type: ignore[return-value]


class BlazeFaceFallback:
    """Full range, and short range on a photo where full range finds no face (the ``blazeface`` detector).

    The full-range model was made for small, distant faces and misses some large, close ones (52 of LFW's
    9,123 photos) that the short-range model finds; short range in turn misses most faces of a group photo.
    Running short range only where full range found nothing keeps full range's boxes on every photo it
    handles and costs one short-range pass (~3 ms) on the others. Boxes, keypoints and scores come from the
    one model that found them. :attr:`model_id` is full range's (whose boxes it returns in the main).
    """

    def __init__(self, full: BlazeFaceDetector, short: BlazeFaceDetector) -> None:
        self.full = full
        self.short = short
        self.model_id = full.model_id

    def detect_keypoints(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`BlazeFaceDetector.detect_keypoints`: full range's faces, else short range's."""
        found = self.full.detect_keypoints(image)
        return found if len(found[2]) else self.short.detect_keypoints(image)

    def detect_landmarks(self, image: np.ndarray) -> tuple[list[RawDetection], np.ndarray]:
        """:meth:`detect` plus each face's ``arcface5`` points (K×5×2), from the model that found it."""
        return _with_arcface5(*self.detect_keypoints(image))

    def detect(self, image: np.ndarray) -> list[RawDetection]:
        return self.detect_landmarks(image)[0]


class BlazeFaceKeypoints:
    """The ``arcface5`` points of given boxes from BlazeFace's keypoints (the landmark model of a BlazeFace
    profile). Each box is cut out as a square of ``context`` × its size around its centre and run through the
    detector in one batch; the detection overlapping the box most gives the points. A box where BlazeFace finds
    no face gets points placed on the template's proportions of the box."""

    scheme = "arcface5"

    def __init__(self, detector: BlazeFaceDetector, *, context: float = 2.0) -> None:
        self.detector = detector
        self.model_id = detector.model_id
        self.context = float(context)

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        pixels = _rgb(image)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, 5, 2), np.float64)
        d = self.detector
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * self.context
        side = np.maximum(side, 1.0)
        scale = d.size / side  # square pixel = (image pixel - origin) * scale
        origin = centre - side[:, None] / 2
        matrices = np.zeros((len(boxes), 2, 3), np.float64)
        matrices[:, 0, 0] = matrices[:, 1, 1] = scale
        matrices[:, :, 2] = -origin * scale[:, None]
        squares = np.stack(
            [cv2.warpAffine(pixels, m, (d.size, d.size), flags=cv2.INTER_AREA, borderValue=0) for m in matrices]
        )
        with d._lock:
            cand_boxes, cand_points, scores = d.raw(squares)
        # the box itself in square pixels, to pick the detection that overlaps it most (ties: higher score)
        target = np.concatenate([(boxes[:, :2] - origin) * scale[:, None], (boxes[:, 2:] - origin) * scale[:, None]], 1)
        out = np.empty((len(boxes), 5, 2), np.float64)
        for i in range(len(boxes)):
            fit = iou_one(target[i], cand_boxes[i]) * (scores[i] >= d.min_score * 0.5)
            if fit.max() <= 0.1:
                out[i] = _template_points(boxes[i])
                continue
            best = int(np.argmax(fit + 1e-3 * scores[i]))
            points = cand_points[i, best][None] / scale[i] + origin[i]
            out[i] = arcface5_from_keypoints(points)[0]
        return out


def _template_points(box: np.ndarray) -> np.ndarray:
    """ArcFace's 5 template points placed in a box (a last resort for a box without keypoints)."""
    template = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])
    frac = (template - [0, 8]) / [112, 104]
    return box[:2] + frac * (box[2:] - box[:2])
