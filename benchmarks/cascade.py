"""The cascade's own costs: what each setting of its crops and its ONet cut costs and whether recall holds.

    nice -n 10 python benchmarks/cascade.py                 # all shared photos + dlib_faces, ~5 min on 1 thread

For every variant (the default first), on ``../shared/data/faces`` (38 photos) and ``dlib_faces`` (9 photos
with 43 hand-drawn boxes): CPU ms per photo (process time, one ORT thread, one warm-up photo), MMOD crops per
photo, and recall against two references — the full-scan MMOD detector's faces (``min_face=40``, IoU ≥ 0.5:
the cascade's promise, as tests/test_cascade.py checks) and the ``dlib_faces`` boxes (IoU ≥ 0.4: they are
tight squares). A variant that loses a face either reference has is not a candidate for the default.

Variants: ``crop_face`` (the proposal's side in the MMOD crop, px: a smaller crop is a more compact pyramid,
since the levels above the proposal's scale find faces far smaller than the proposal) and ``onet_threshold``
(proposals ONet rates below it are dropped as background before any MMOD crop).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from faceprint.detect.cascade import CascadeDetector
from faceprint.detect.mmod import MMODDetector
from faceprint.evaluation.detection import read_dlib_xml
from faceprint.evaluation.metrics import box_iou
from faceprint.image import load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS: list[dict[str, float]] = [
    {},
    {"crop_face": 120.0},
    {"crop_face": 100.0},
    {"onet_threshold": 0.6},
    {"onet_threshold": 0.8},
    {"crop_face": 120.0, "onet_threshold": 0.6},
]


def found(reference: np.ndarray, boxes: np.ndarray, iou: float) -> int:
    if len(reference) == 0 or len(boxes) == 0:
        return 0
    return int((box_iou(reference, boxes).max(axis=1) >= iou).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    photos = sorted((DATA / "faces").rglob("*.jpg"))
    boxes = [*read_dlib_xml(DATA / "dlib_faces" / "training.xml"), *read_dlib_xml(DATA / "dlib_faces" / "testing.xml")]
    truth = {a.image: a.boxes[~a.ignore] if len(a.ignore) else a.boxes for a in boxes}
    images = {p: load_image(p).pixels for p in [*photos, *truth]}
    full = MMODDetector(min_face=40, threads=args.threads)
    reference = {p: np.array([b for b, _ in full.detect(images[p])]).reshape(-1, 4) for p in photos}
    n_full = sum(len(v) for v in reference.values())
    n_truth = sum(len(v) for v in truth.values())
    print(f"{len(photos)} photos, {n_full} full-scan faces; {len(truth)} dlib_faces photos, {n_truth} boxes")
    print("| variant | CPU ms/photo | crops/photo | full-scan faces found | dlib_faces boxes found |")
    print("| --- | --- | --- | --- | --- |")
    for variant in VARIANTS:
        cascade = CascadeDetector(threads=args.threads, **variant)  # type: ignore[arg-type]
        cascade.detect(images[photos[0]])
        crops, hits_full, hits_truth = 0, 0, 0
        started = time.process_time()
        for path, pixels in images.items():
            boxes = np.array([b for b, _ in cascade.detect(pixels)]).reshape(-1, 4)
            crops += cascade.last_stats.get("crops", 0)
            if path in reference:
                hits_full += found(reference[path], boxes, 0.5)
            else:
                hits_truth += found(truth[path], boxes, 0.4)
        ms = 1000 * (time.process_time() - started) / len(images)
        name = ", ".join(f"{k}={v:g}" for k, v in variant.items()) or "default"
        print(f"| {name} | {ms:.1f} | {crops / len(images):.2f} | {hits_full}/{n_full} | {hits_truth}/{n_truth} |")


if __name__ == "__main__":
    main()
