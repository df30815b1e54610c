"""Accuracy levers (issue 14): one detection pass per (profile, photo set), then cheap re-embeddings per
alignment variant, then many scorings — so every lever costs one embedding pass, never a detection pass.

    # 1. detections (boxes, scores, 5 landmarks of the profile and, for the cascade, also the pack's 68-point
    #    model's 5 points on the same boxes) of every photo of a folder of identities
    python benchmarks/accuracy_levers.py detect --profile dlib --dir ../shared/data/celeba_wild \\
        --out /tmp/accuracy-cache/det-dlib-wild.npz
    # 2. embeddings of every detected face (plain and mirrored chip) for one alignment variant
    python benchmarks/accuracy_levers.py embed --det /tmp/accuracy-cache/det-dlib-wild.npz \\
        --model dlib-resnet-v1 --template dlib5-150-p0.25 --out /tmp/accuracy-cache/emb-dlib-wild-p25.npz

The scoring of the variants (face choice, mirrored-chip averaging, template scoring) reads these files; see
docs/evaluation.md, "Where accuracy is lost".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from faceprint.align.chips import ChipTemplate, _extract_one, chip_matrix
from faceprint.align.templates import chip_template
from faceprint.evaluation.pairs import identity_folders
from faceprint.factory import load_landmarker
from faceprint.image import load_image
from faceprint.pipeline import Pipeline

PROFILES = {"dlib": "dlib-resnet-v1", "pack": "faceplugin-mbf"}
INTERP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


def detect(args: argparse.Namespace) -> None:
    pipe = Pipeline(embedder=PROFILES[args.profile], detector=args.detector)
    alt = None
    if pipe.landmark_scheme == "dlib5":  # the pack's 68-point model on the same boxes, for the yaw/landmark study
        alt = load_landmarker(pipe.registry, "faceplugin-landmark68", detector=pipe.config.detector_id)
    people = identity_folders(Path(args.dir))
    paths = [p for name in sorted(people) for p in people[name]]
    keys, labels, sizes, det_photo, boxes, scores, lms, lms_alt = [], [], [], [], [], [], [], []
    started = time.perf_counter()
    for i, path in enumerate(paths):
        img = load_image(path)
        raw = pipe.detector.detect(img.pixels)
        keys.append(str(Path(path).resolve()))
        labels.append(Path(path).parent.name)
        sizes.append((img.pixels.shape[1], img.pixels.shape[0]))
        if raw:
            b = np.array([box for box, _ in raw], dtype=np.float64)
            det_photo += [i] * len(raw)
            boxes.append(b)
            scores += [float(s) for _, s in raw]
            lms.append(np.asarray(pipe.landmarker.predict(img.pixels, b), dtype=np.float64))
            if alt is not None:
                lms_alt.append(np.asarray(alt.predict(img.pixels, b), dtype=np.float64))
        if (i + 1) % 500 == 0:
            print(f"{i + 1}/{len(paths)} photos, {time.perf_counter() - started:.0f} s", flush=True)
    np.savez(
        args.out,
        profile=args.profile,
        scheme=pipe.landmark_scheme,
        keys=np.array(keys),
        labels=np.array(labels),
        sizes=np.array(sizes),
        det_photo=np.array(det_photo, dtype=np.int64),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        scores=np.array(scores),
        landmarks=np.concatenate(lms) if lms else np.zeros((0, 5, 2)),
        landmarks_alt=np.concatenate(lms_alt) if lms_alt else np.zeros((0, 5, 2)),
    )
    print(f"{len(paths)} photos, {len(det_photo)} faces in {time.perf_counter() - started:.0f} s -> {args.out}")


def _chip(image: np.ndarray, points: np.ndarray, template: ChipTemplate, interp: int) -> np.ndarray:
    matrix = chip_matrix(points, template)
    if interp == cv2.INTER_LINEAR:  # the library's own aligner
        return _extract_one(image, matrix, template.size)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    source = image
    levels = int(np.floor(np.log2(scale))) if scale > 1 and interp != cv2.INTER_AREA else 0
    if levels:
        for _ in range(levels):
            source = cv2.pyrDown(source)
        matrix = matrix / 2**levels
    if interp == cv2.INTER_AREA:  # area: resize the region first so the warp is near 1:1
        interp = cv2.INTER_LINEAR
        if scale > 1:
            source = cv2.resize(image, None, fx=1 / scale, fy=1 / scale, interpolation=cv2.INTER_AREA)
            matrix = matrix / scale
    return cv2.warpAffine(
        source, matrix, (template.size, template.size), flags=interp | cv2.WARP_INVERSE_MAP, borderValue=(0, 0, 0)
    )


def embed(args: argparse.Namespace) -> None:
    det = np.load(args.det)
    pipe = Pipeline(embedder=args.model)
    scheme = str(det["scheme"]) if args.landmarks == "main" else "arcface5"
    points = det["landmarks"] if args.landmarks == "main" else det["landmarks_alt"]
    template = chip_template(args.template or pipe.spec.template, scheme)
    interp = INTERP[args.interp]
    keys, det_photo = det["keys"], det["det_photo"]
    n = len(det_photo)
    vectors = np.zeros((n, pipe.dim), np.float32)
    flipped = np.zeros((n, pipe.dim), np.float32)
    sharp = np.zeros(n)
    bright = np.zeros(n)
    started = time.perf_counter()
    order = np.argsort(det_photo, kind="stable")
    starts = np.searchsorted(det_photo[order], np.arange(len(keys)))
    stops = np.searchsorted(det_photo[order], np.arange(len(keys)), side="right")
    batch_idx: list[int] = []
    batch_chips: list[np.ndarray] = []

    def flush() -> None:
        if not batch_idx:
            return
        chips = np.stack(batch_chips)
        vectors[batch_idx] = pipe.embedder.embed_chips(chips)
        flipped[batch_idx] = pipe.embedder.embed_chips(np.ascontiguousarray(chips[:, :, ::-1]))
        batch_idx.clear()
        batch_chips.clear()

    for i, k in enumerate(keys):
        rows = order[starts[i] : stops[i]]
        if not len(rows):
            continue
        img = load_image(k).pixels
        for r in rows:
            chip = _chip(img, points[r], template, interp)
            grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
            h, w = grey.shape
            centre = grey[h // 5 : h - h // 5, w // 5 : w - w // 5]
            sharp[r] = cv2.Laplacian(centre, cv2.CV_64F).var()
            bright[r] = centre.mean()
            batch_idx.append(int(r))
            batch_chips.append(chip)
        if len(batch_idx) >= 64:
            flush()
        if (i + 1) % 1000 == 0:
            print(f"{i + 1}/{len(keys)} photos, {time.perf_counter() - started:.0f} s", flush=True)
    flush()
    np.savez(args.out, model=args.model, template=template.name, interp=args.interp, vectors=vectors,
             flipped=flipped, sharpness=sharp, brightness=bright)  # fmt: skip
    print(f"{n} faces embedded in {time.perf_counter() - started:.0f} s -> {args.out}")


def export(args: argparse.Namespace) -> None:
    """An embeddings cache for ``faceprint eval``/``calibrate --cache`` from a detection and an embedding file:
    the face the ``--face`` rule picks, its plain or mirror-averaged vector. Only for the library's own
    alignment (template of the spec, linear interpolation), where these vectors are the pipeline's."""
    from faceprint.evaluation.embedding import NO_FACE, Embeddings, choose_face
    from faceprint.image import Image
    from faceprint.types import Detection

    det, emb = np.load(args.det), np.load(args.emb)
    pipe = Pipeline(embedder=str(emb["model"]), mirror=args.mirror)
    vectors = emb["vectors"] + (emb["flipped"] if args.mirror else 0)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    keys, rows, failures = [], [], {}
    for i, k in enumerate(det["keys"]):
        found = np.nonzero(det["det_photo"] == i)[0]
        if not len(found):
            failures[str(k)] = NO_FACE
            continue
        w, h = det["sizes"][i]
        image = Image(np.zeros((1, 1, 3), np.uint8), str(k), original=(int(w), int(h)))
        dets = [Detection(tuple(det["boxes"][r]), float(det["scores"][r])) for r in found]
        keys.append(str(k))
        rows.append(found[dets.index(choose_face(dets, image, args.face))])
    label = f"{pipe.detector_name}/{args.face}" + ("/mirror" if pipe.profile.mirror else "")
    Embeddings(pipe.model_id, label, tuple(keys), vectors[rows].astype(np.float32), failures).save(Path(args.out))
    print(f"{len(keys)} photos ({len(failures)} without a face) -> {args.out} [{pipe.model_id} {label}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect")
    d.add_argument("--profile", choices=sorted(PROFILES), required=True)
    d.add_argument("--dir", required=True)
    d.add_argument("--detector", default=None, help="another detector than the profile's (cascade, mmod, …)")
    d.add_argument("--out", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--det", required=True)
    e.add_argument("--model", required=True)
    e.add_argument("--landmarks", choices=("main", "alt"), default="main")
    e.add_argument("--template", default=None)
    e.add_argument("--interp", choices=sorted(INTERP), default="linear")
    e.add_argument("--out", required=True)
    x = sub.add_parser("export")
    x.add_argument("--det", required=True)
    x.add_argument("--emb", required=True)
    x.add_argument("--face", choices=("largest", "centre"), default="largest")
    x.add_argument("--mirror", action="store_true")
    x.add_argument("--out", required=True)
    args = parser.parse_args()
    {"detect": detect, "embed": embed, "export": export}[args.cmd](args)


if __name__ == "__main__":
    main()
