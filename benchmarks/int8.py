"""int8 embedders: write the shipped calibration ranges, and time fp32 against int8.

    python benchmarks/int8.py calibrate --model dlib-resnet-v1 --photos 300   # → src/faceprint/models/quantization/
    python benchmarks/int8.py calibrate --model faceplugin-mbf --photos 300
    python benchmarks/int8.py speed --model dlib-resnet-v1 --threads 1

``calibrate``: face chips of LFW DevTrain photos (``peopleDevTrain.txt``: identities disjoint from the
``pairs.txt``/DevTest photos the accuracy check uses), ``--photos`` of them spread evenly over the list, found
and aligned by the model's own profile (detector + landmarks); their network inputs go through the fp32 graph
and ONNX Runtime records every activation's range (:func:`faceprint.models.quantize.calibrate`).

``speed``: ms per face at batch 32 (and 1) of the fp32 and int8 graphs on the same chips, after a warm-up,
wall and process CPU time; and the lowest cosine between the two vectors of a chip (parity bound 0.99).

Accuracy (LFW ``pairs.txt`` 10-fold and DevTest TAR@FMR) is measured with the evaluation toolkit: see the
commands in docs/models.md ("int8").
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from faceprint.detect.mmod import MMODDetector
from faceprint.embed.dlib_resnet import preprocess
from faceprint.evaluation.pairs import identity_folders, read_people
from faceprint.image import load_image
from faceprint.models.onnx_model import OnnxModel
from faceprint.models.quantize import calibrate
from faceprint.pipeline import Pipeline, PipelineConfig

log = logging.getLogger("int8")
LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
OUT = Path(__file__).resolve().parents[1] / "src" / "faceprint" / "models" / "quantization"


def devtrain_chips(pipeline: Pipeline, photos: int) -> np.ndarray:
    """Chips of the largest face of ``photos`` DevTrain photos spread evenly over the list."""
    people = identity_folders(LFW, read_people(LFW / "peopleDevTrain.txt"))
    paths = sorted(p for images in people.values() for p in images)
    chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, photos).astype(int)]
    chips = []
    for path in chosen:
        image = load_image(path)
        found = pipeline.detect(image)
        if found:
            chips.append(pipeline.chips(image, [max(found, key=lambda d: d.area)])[0])
    log.info("%d chips from %d DevTrain photos", len(chips), len(chosen))
    return np.stack(chips)


def network_input(pipeline: Pipeline, chips: np.ndarray) -> np.ndarray:
    embedder = pipeline.embedder
    return embedder.to_tensor(chips) if isinstance(embedder, OnnxModel) else preprocess(chips)


def fp32_file(pipeline: Pipeline) -> Path:
    embedder = pipeline.embedder
    return Path(getattr(embedder, "path"))  # noqa: B009 (both embedders record the graph they run)


def devtrain_photos(photos: int) -> list[np.ndarray]:
    people = identity_folders(LFW, read_people(LFW / "peopleDevTrain.txt"))
    paths = sorted(p for images in people.values() for p in images)
    return [load_image(paths[i]).pixels for i in np.linspace(0, len(paths) - 1, photos).astype(int)]


def detector_inputs(model: str, photos: int) -> tuple[Path, list[np.ndarray]]:
    """The fp32 graph of a detector and its network inputs for DevTrain photos (one per photo)."""
    if model == "dlib-mmod":
        mmod = MMODDetector(min_face=40.0)
        tensors = []
        for pixels in devtrain_photos(photos):
            scale = mmod.work_scale(*pixels.shape[:2])
            size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
            tensors.append(mmod.input_tensor(cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR))[0])
        return mmod.path, tensors
    pipeline = Pipeline(PipelineConfig(detector=model))
    detector = getattr(pipeline.detector, "inner", pipeline.detector)  # UltraFace behind its ONet check
    size = (detector.input.width, detector.input.height)
    inputs = [
        detector.to_tensor(cv2.resize(p, size, interpolation=cv2.INTER_AREA)[None]) for p in devtrain_photos(photos)
    ]
    return detector.path, inputs


def run_calibrate(args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{args.model}.json"
    if args.model in ("dlib-mmod", "faceplugin-ultraface"):
        fp32, inputs = detector_inputs(args.model, args.photos)
        calibrate(fp32, iter(inputs), out)
        log.info("ranges of %d photos → %s", len(inputs), out)
        return
    pipeline = Pipeline(PipelineConfig(embedder=args.model))
    tensor = network_input(pipeline, devtrain_chips(pipeline, args.photos))
    calibrate(fp32_file(pipeline), (tensor[i : i + 1] for i in range(len(tensor))), out)  # some graphs fix batch 1
    log.info("ranges of %d chips → %s", len(tensor), out)


def per_face_ms(pipeline: Pipeline, chips: np.ndarray, batch: int, repeats: int) -> tuple[float, float]:
    embed = pipeline.embedder.embed_chips
    embed(chips[:batch])  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        for start in range(0, len(chips) - batch + 1, batch):
            embed(chips[start : start + batch])
    faces = repeats * (len(chips) // batch) * batch
    return 1000 * (time.perf_counter() - t0) / faces, 1000 * (time.process_time() - c0) / faces


def run_speed(args: argparse.Namespace) -> None:
    fp32 = Pipeline(PipelineConfig(embedder=args.model, threads=args.threads))
    int8 = Pipeline(PipelineConfig(embedder=args.model, threads=args.threads, precision="int8"))
    chips = devtrain_chips(fp32, args.photos)
    chips = np.concatenate([chips] * (-(-64 // len(chips))))[: max(64, len(chips) // 32 * 32)]
    a, b = fp32.embedder.embed_chips(chips), int8.embedder.embed_chips(chips)
    cosine = np.sum(a * b, axis=1)
    print(f"{args.model}: {len(chips)} chips, cosine fp32↔int8 min {cosine.min():.4f}, median {np.median(cosine):.4f}")
    print("| precision | batch | ms/face wall | ms/face CPU |")
    print("| --- | --- | --- | --- |")
    for name, pipeline in (("fp32", fp32), ("int8", int8)):
        for batch in (1, 32):
            wall, cpu = per_face_ms(pipeline, chips if batch == 32 else chips[:32], batch, args.repeats)
            print(f"| {name} | {batch} | {wall:.2f} | {cpu:.2f} |")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--model", required=True)
    c.add_argument("--photos", type=int, default=300)
    c.set_defaults(func=run_calibrate)
    s = sub.add_parser("speed")
    s.add_argument("--model", required=True)
    s.add_argument("--photos", type=int, default=64)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--repeats", type=int, default=3)
    s.set_defaults(func=run_speed)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
