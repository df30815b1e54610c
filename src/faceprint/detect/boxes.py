"""Box geometry shared by the one-pass detectors' decoders: IoU of one box against many, and greedy NMS."""

from __future__ import annotations

import numpy as np


def iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of ``box`` (x1, y1, x2, y2) with each row of ``boxes`` (N×4); degenerate boxes have area 0."""
    w = np.maximum(0, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    h = np.maximum(0, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = w * h
    area = max(0.0, float(box[2] - box[0])) * max(0.0, float(box[3] - box[1]))
    areas = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou_one(boxes[i], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)
