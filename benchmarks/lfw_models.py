"""Compare embedders on LFW with one detection pass shared by all of them.

Detection (MMOD + landmarks) is ~90% of the cost of embedding an LFW photo, and it does not depend on the
embedder. Running ``faceprint eval verify --model X`` once per model would detect every photo again, so
this script:

1. ``detect``: runs the default pipeline's detector and 5-point landmarks on every photo of the pair list(s)
   and people list(s) once and saves all detections (boxes, scores, dlib 5 points) to an ``.npz`` file,
   checkpointing as it goes (safe to interrupt and restart);
2. ``embed``: for each model (and alignment), picks the face exactly as the evaluation toolkit does
   (``--face centre``), embeds it, and writes an embeddings cache in the toolkit's own format.

``faceprint eval verify --model X --cache FILE`` and ``faceprint calibrate --model X --cache FILE`` then read
those caches: the numbers come from the toolkit's own code. Without the caches the same commands give the
same results, only detecting each photo again per model.

    python benchmarks/lfw_models.py detect --out /tmp/lfw-dets.npz
    python benchmarks/lfw_models.py embed --dets /tmp/lfw-dets.npz --model faceplugin-mbf --out /tmp/fp.npz
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from faceprint.evaluation.embedding import NO_FACE, Embeddings, cache_label, choose_face, key
from faceprint.evaluation.pairs import identity_folders, read_pairs, read_people
from faceprint.image import load_image
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.types import Detection

log = logging.getLogger("lfw_models")
LFW = Path("/work/shared/data/lfw")


def photo_list(root: Path, pair_files: list[str], people_files: list[str]) -> list[str]:
    paths: dict[str, None] = {}
    for name in pair_files:
        for pair in read_pairs(root / name, root):
            paths[key(pair.a)] = None
            paths[key(pair.b)] = None
    for name in people_files:
        for images in identity_folders(root, read_people(root / name)).values():
            for p in images:
                paths[key(p)] = None
    return list(paths)


def _load_dets(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        keys, counts = data["keys"], data["counts"]
        boxes, scores, landmarks = data["boxes"], data["scores"], data["landmarks"]
    out = {}
    start = 0
    for k, n in zip(keys.tolist(), counts.tolist(), strict=True):
        out[str(k)] = (boxes[start : start + n], scores[start : start + n], landmarks[start : start + n])
        start += n
    return out


def _save_dets(path: Path, dets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    keys = list(dets)
    counts = np.array([len(dets[k][0]) for k in keys], dtype=np.int32)
    cat = lambda i, shape: (  # noqa: E731
        np.concatenate([dets[k][i] for k in keys]) if counts.sum() else np.zeros(shape, np.float32)
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            keys=np.array(keys, dtype=str),
            counts=counts,
            boxes=cat(0, (0, 4)),
            scores=cat(1, (0,)),
            landmarks=cat(2, (0, 5, 2)),
        )
    tmp.replace(path)


def detect(args: argparse.Namespace) -> None:
    out = Path(args.out)
    dets = _load_dets(out)
    todo = [k for k in photo_list(LFW, args.pairs, args.people) if k not in dets]
    log.info("%d photos already detected, %d to go", len(dets), len(todo))
    pipeline = Pipeline(PipelineConfig(detector=args.detector))
    started = time.perf_counter()
    for n, k in enumerate(todo, 1):
        found = pipeline.detect(load_image(Path(k)))
        dets[k] = (
            np.array([d.box for d in found], dtype=np.float32).reshape(-1, 4),
            np.array([d.score for d in found], dtype=np.float32),
            np.array([d.landmarks for d in found], dtype=np.float32).reshape(-1, 5, 2),
        )
        if n % 250 == 0 or n == len(todo):
            _save_dets(out, dets)
            rate = n / (time.perf_counter() - started)
            log.info("%d/%d (%.2f photos/s, %.0f s left)", n, len(todo), rate, (len(todo) - n) / rate)
    _save_dets(out, dets)


def embed(args: argparse.Namespace) -> None:
    dets = _load_dets(Path(args.dets))
    config = PipelineConfig(
        detector=args.detector, embedder=args.model, landmarks=args.landmarks, precision=args.precision
    )
    pipeline = Pipeline(config)
    saved = PipelineConfig(detector=args.detector).profile  # the landmarks the detect step saved
    keys: list[str] = []
    vectors: list[np.ndarray] = []
    failures: dict[str, str] = {}
    batch: list = []
    started = time.perf_counter()

    def flush() -> None:
        for k, prints in zip([k for k, _ in batch], pipeline.embed_batch([b for _, b in batch]), strict=True):
            keys.append(k)
            vectors.append(prints[0].vector)
        batch.clear()

    for n, (k, (boxes, scores, landmarks)) in enumerate(dets.items(), 1):
        if n % 1000 == 0:
            log.info("%d/%d", n, len(dets))
        if not len(boxes):
            failures[k] = NO_FACE
            continue
        image = load_image(Path(k))
        found = [
            Detection(box=tuple(map(float, b)), score=float(s), landmarks=lm, landmark_scheme=saved.landmark_scheme)
            for b, s, lm in zip(boxes, scores, landmarks, strict=True)
        ]
        face = choose_face(found, image, "centre")
        if pipeline.landmarker_id != saved.landmarks:  # other landmarks than the detect step's
            face = pipeline.landmark(image, [(face.box, face.score)])[0]
        batch.append((k, (image, [face])))
        if len(batch) >= 32:
            flush()
    flush()
    matrix = np.vstack(vectors).astype(np.float32)
    result = Embeddings(pipeline.model_id, cache_label(pipeline, "centre"), tuple(keys), matrix, failures)
    result.save(Path(args.out))
    log.info("%d faces embedded in %.0f s → %s", len(keys), time.perf_counter() - started, args.out)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    d = sub.add_parser("detect")
    d.add_argument("--out", required=True)
    d.add_argument("--pairs", nargs="*", default=["pairs.txt"])
    d.add_argument("--people", nargs="*", default=["peopleDevTrain.txt"])
    d.add_argument("--detector", default="mmod")
    d.set_defaults(func=detect)
    e = sub.add_parser("embed")
    e.add_argument("--dets", required=True)
    e.add_argument("--model", required=True)
    e.add_argument("--landmarks", default=None)
    e.add_argument("--out", required=True)
    e.add_argument("--detector", default="mmod")
    e.add_argument("--precision", default="fp32", help="fp32 or int8 (the embedder's quantized graph)")
    e.set_defaults(func=embed)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
