"""Evaluation commands: ``eval verify|identify|wild|detect|liveness``, ``calibrate [liveness]``, ``bench``.

Thin: parse options, call :mod:`faceprint.evaluation`, print Markdown (or JSON with ``--json``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from faceprint.cli import app
from faceprint.cli.common import emit_json, expand_images, fail, handle_errors, progress
from faceprint.cli.core import DetectorOpt, resolve_model
from faceprint.pipeline import Pipeline, PipelineConfig

log = logging.getLogger("faceprint.cli")

eval_app = typer.Typer(
    name="eval",
    help="Measure accuracy on your own labelled photos: verification, identification, detection.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")

DeviceOpt = typer.Option("cpu", "--device", help="Inference device: cpu or cuda (needs onnxruntime-gpu).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of Markdown text.")
ReportOpt = typer.Option(None, "--report", help="Write report.md, report.html and PNG plots into this folder.")
FaceOpt = typer.Option(
    "largest", "--face", help="Which face of a photo with several: largest, or centre (use centre for LFW)."
)
CacheOpt = typer.Option(
    None, "--cache", help="Embeddings cache (.npz) to reuse across runs; keyed by model, detector and path."
)
PeopleOpt = typer.Option(
    None, "--people", help="With --dir: only these identities (LFW people*.txt, or one name per line)."
)
BatchOpt = typer.Option(32, "--batch", min=1, help="Faces embedded per network run.")
CohortsOpt = typer.Option(
    "--cohorts",
    help="Cohort labels from your evaluation data: a CSV 'image or identity, cohort', or LABEL=FILE lists of image "
    "names or identities (repeat: --cohorts female=female_names.txt --cohorts male=male_names.txt). Keys in two "
    "lists count for no cohort and are reported.",
)
ModelOpt = typer.Option(
    None, "--model", help="Embedder model id (default: the one `faceprint models use` chose, else dlib-resnet-v1)."
)


def _quiet_plotting() -> None:
    """`-v` turns on DEBUG for every logger; matplotlib's font search would drown the progress lines."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.INFO)


def _publish(
    result: Any, report: Path | None, write: Callable[[Path], list[Path]], blocks: Callable[[], list[Any]],
    json_out: bool,
) -> None:  # fmt: skip
    """How every eval command ends: the report folder (``write``) when asked, then JSON or the Markdown tables."""
    from faceprint.evaluation.report import to_markdown

    if report is not None:
        _quiet_plotting()
        written = write(report)
        typer.echo(f"report: {', '.join(str(p) for p in written)}", err=True)
    if json_out:
        emit_json(result.to_dict())
    else:
        typer.echo(to_markdown(blocks()), nl=False)


def _pipeline(detector: str | None, device: str, threads: int | None = None, model: str | None = None) -> Pipeline:
    config = PipelineConfig(detector=detector, device=device, threads=threads, embedder=resolve_model(model))
    return Pipeline(config)


def _embed(paths: list[Path], pipeline: Pipeline, face: str, cache: Path | None, batch: int):
    from faceprint.evaluation.embedding import embed_images

    started = time.perf_counter()
    result = embed_images(
        paths,
        pipeline,
        face=face,
        batch_size=batch,
        cache=cache,
        progress=lambda items: progress(items, "embedding"),
    )
    log.info("embedded %d photos in %.1f s", len(paths), time.perf_counter() - started)
    return result


def _identities(root: Path, people: Path | None) -> dict[str, list[Path]]:
    from faceprint.evaluation.pairs import identity_folders, read_people

    return identity_folders(root, read_people(people) if people is not None else None)


def _pairs(pairs_file: Path | None, root: Path | None, folder: Path | None, people: Path | None,
           impostors: int, seed: int) -> tuple[list, str, Path | None]:  # fmt: skip
    from faceprint.evaluation.pairs import folder_pairs, read_pairs

    if (pairs_file is None) == (folder is None):
        raise fail("give either --pairs FILE (with --root DIR) or --dir ROOT")
    if pairs_file is not None:
        if people is not None:
            raise fail("--people works with --dir only")
        return read_pairs(pairs_file, root), str(pairs_file), root or pairs_file.parent
    identities = _identities(folder, people)  # type: ignore[arg-type]
    pairs = folder_pairs(identities, impostors=impostors, seed=seed)
    return pairs, f"{folder} ({len(identities)} identities)", folder


@eval_app.command("verify")
@handle_errors
def eval_verify(
    pairs_file: Annotated[
        Path | None, typer.Option("--pairs", help="LFW pairs.txt or CSV (a, b, same/different).")
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Folder the pair file's image paths are relative to.")
    ] = None,
    folder: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="One subfolder per identity: all genuine pairs and a seeded sample of impostor pairs."
        ),
    ] = None,
    people: Path | None = PeopleOpt,
    impostors: Annotated[
        int, typer.Option("--impostors", min=1, help="With --dir: impostor pairs to sample.")
    ] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the impostor sample.")] = 0,
    fmr: Annotated[float | None, typer.Option("--fmr", help="FMR of the configured threshold (default 1e-3).")] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Configured threshold (raw cosine score).")
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="Calibration table (default: shipped).")
    ] = None,
    cohorts: Annotated[list[str] | None, CohortsOpt] = None,
    json_out: bool = JsonOpt,
    report: Path | None = ReportOpt,
    face: str = FaceOpt,
    cache: Path | None = CacheOpt,
    batch: int = BatchOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
) -> None:
    """Verification accuracy, EER, ROC AUC, TAR at FAR, threshold table and k-fold accuracy of a pair list."""
    from faceprint.errors import FaceprintError
    from faceprint.evaluation.report import verification_blocks, write_verification_report
    from faceprint.evaluation.verification import evaluate_scores, load_cohorts, score_pairs
    from faceprint.matching import DEFAULT_FMR, Calibration, shipped_calibration

    if fmr is not None and threshold is not None:
        raise fail("give --fmr or --threshold, not both")
    pairs, source, base = _pairs(pairs_file, root, folder, people, impostors, seed)
    pipeline = _pipeline(detector, device, model=model)
    table = None
    if calibration is not None:
        table = Calibration.load(calibration)
    else:
        try:
            table = shipped_calibration(pipeline.model_id)
        except FaceprintError as exc:
            typer.echo(f"note: {exc}; reporting without a configured threshold", err=True)
    paths = list(dict.fromkeys(p for pair in pairs for p in (pair.a, pair.b)))
    embeddings = _embed(paths, pipeline, face, cache, batch)
    scored = score_pairs(pairs, embeddings)
    labels, notes = None, []
    if cohorts:
        groups = load_cohorts(cohorts)
        labels = ([groups.label(p.a, base) for p in scored.pairs], [groups.label(p.b, base) for p in scored.pairs])
        notes = groups.describe()
    result = evaluate_scores(
        scored,
        model_id=pipeline.model_id,
        source=source,
        calibration=table,
        threshold=threshold,
        default_fmr=fmr if fmr is not None else DEFAULT_FMR,
        cohorts=labels,
        cohort_notes=notes,
    )
    _publish(
        result, report, lambda r: write_verification_report(result, r), lambda: verification_blocks(result), json_out
    )


@eval_app.command("identify")
@handle_errors
def eval_identify(
    folder: Annotated[Path, typer.Option("--dir", help="One subfolder per identity.")],
    people: Path | None = PeopleOpt,
    enrol: Annotated[
        int, typer.Option("--enrol", min=1, help="Photos enrolled per identity; the rest are probes.")
    ] = 1,
    holdout: Annotated[
        float,
        typer.Option(
            "--holdout",
            min=0.0,
            max=1.0,
            help="Fraction of identities kept out of the gallery as distractors "
            "(identities with --enrol photos or fewer always are).",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the enrolment choice and the hold-out.")] = 0,
    json_out: bool = JsonOpt,
    report: Path | None = ReportOpt,
    face: str = FaceOpt,
    cache: Path | None = CacheOpt,
    batch: int = BatchOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
) -> None:
    """Rank-1/rank-5 identification (CMC) and open-set FNIR at FPIR on a folder of identities."""
    from faceprint.evaluation.identification import evaluate_identification, split_identities
    from faceprint.evaluation.report import identification_blocks, write_identification_report

    identities = _identities(folder, people)
    split = split_identities(identities, enrol=enrol, holdout=holdout, seed=seed)
    pipeline = _pipeline(detector, device, model=model)
    paths = [p for images in identities.values() for p in images]
    result = evaluate_identification(split, _embed(paths, pipeline, face, cache, batch))
    source = f"{folder} ({len(identities)} identities)"
    _publish(
        result,
        report,
        lambda r: write_identification_report(result, source, r),
        lambda: identification_blocks(result, source),
        json_out,
    )


@eval_app.command("wild")
@handle_errors
def eval_wild(
    folder: Annotated[Path, typer.Option("--dir", help="One subfolder per identity (photos as users take them).")],
    people: Path | None = PeopleOpt,
    enrol: Annotated[int, typer.Option("--enrol", min=1, help="Photos enrolled per identity.")] = 3,
    probes: Annotated[
        int | None, typer.Option("--probes", min=1, help="Mated probes per enrolled identity (default: the rest).")
    ] = None,
    strangers: Annotated[
        float, typer.Option("--strangers", min=0.0, max=0.95, help="Share of identities never enrolled.")
    ] = 0.3,
    scoring: Annotated[
        str, typer.Option("--scoring", help="A subject's score over its templates: max, mean or quality.")
    ] = "max",
    fmr: Annotated[
        float | None, typer.Option("--fmr", help="Identification threshold: the table's for this FMR (1e-3).")
    ] = None,
    fpir: Annotated[float | None, typer.Option("--fpir", help="Identification threshold for this FPIR.")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Explicit identification threshold.")] = None,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="Calibration table (default: shipped).")
    ] = None,
    no_gate: Annotated[
        bool, typer.Option("--no-quality-gate", help="Enrol photos the quality gate would reject.")
    ] = False,
    mirror: Annotated[
        bool | None,
        typer.Option("--mirror/--no-mirror", help="Average in the mirrored chip (default: the model's setting)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the strangers and the enrolment photos.")] = 0,
    json_out: bool = JsonOpt,
    face: str = FaceOpt,
    cache: Path | None = CacheOpt,
    batch: int = BatchOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
) -> None:
    """In-the-wild accuracy: all-pairs TAR at FMR 1e-3/1e-4 with the calibration table's stated FMR checked
    against the observed one, and open-set identification (enrolled, probes, strangers) at a threshold."""
    from faceprint.evaluation.wild import identify_open_set, split_wild, to_markdown, verify_all_pairs
    from faceprint.factory import load_calibration
    from faceprint.matching import ThresholdRule

    identities = _identities(folder, people)
    split = split_wild(identities, enrol=enrol, probes=probes, strangers=strangers, seed=seed)
    config = PipelineConfig(detector=detector, device=device, embedder=resolve_model(model), mirror=mirror)
    pipeline = Pipeline(config)
    table = load_calibration(pipeline.model_id, calibration)
    subjects = len(split.enrol)
    rule = ThresholdRule.choose(
        pipeline.model_id, fmr=fmr, fpir=fpir, threshold=threshold, subjects=subjects, calibration=table
    )
    paths = [p for images in identities.values() for p in images]
    embeddings = _embed(paths, pipeline, face, cache, batch)
    verification = verify_all_pairs(embeddings, identities, table)
    ident = identify_open_set(split, embeddings, rule, scoring=scoring, quality_gate=not no_gate)
    if json_out:
        emit_json(
            {
                "source": str(folder),
                "model": pipeline.model_id,
                "profile": pipeline.profile.to_dict(),
                "face": face,
                "verification": verification.to_dict(),
                "identification": ident.to_dict(),
            }
        )
    else:
        typer.echo(to_markdown(str(folder), face, pipeline.model_id, verification, ident), nl=False)


@eval_app.command("detect")
@handle_errors
def eval_detect(
    annotations: Annotated[Path, typer.Option("--annotations", help="WIDER FACE, FDDB ellipse or dlib XML file.")],
    root: Annotated[Path | None, typer.Option("--root", help="Image folder (default: the annotation file's).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, wider, fddb or dlib.")] = "auto",
    iou: Annotated[
        float, typer.Option("--iou", min=0.05, max=0.95, help="IoU for a detection to count as found.")
    ] = 0.5,
    json_out: bool = JsonOpt,
    report: Path | None = ReportOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
) -> None:
    """Average precision, precision/recall and miss rate by face size of the detector."""
    from faceprint.evaluation.detection import evaluate_detection, read_annotations
    from faceprint.evaluation.report import detection_blocks, write_detection_report

    truth = read_annotations(annotations, root, fmt)
    result = evaluate_detection(
        truth, _pipeline(detector, device), iou=iou, progress=lambda items: progress(items, "detecting")
    )
    _publish(
        result,
        report,
        lambda r: write_detection_report(result, str(annotations), r),
        lambda: detection_blocks(result, str(annotations)),
        json_out,
    )


calibrate_app = typer.Typer(
    name="calibrate",
    help="Measure the score → error-rate tables on your own labelled photos: recognition (this command with "
    "--dir/--pairs) or liveness (`calibrate liveness`).",
)
app.add_typer(calibrate_app, name="calibrate")


@calibrate_app.callback(invoke_without_command=True)
@handle_errors
def calibrate(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help="Calibration table to write (.json).")] = None,
    pairs_file: Annotated[Path | None, typer.Option("--pairs", help="LFW pairs.txt or CSV pair list.")] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Folder the pair file's image paths are relative to.")
    ] = None,
    folder: Annotated[
        Path | None, typer.Option("--dir", help="One subfolder per identity: ALL pairs are used.")
    ] = None,
    people: Path | None = PeopleOpt,
    source: Annotated[
        str | None, typer.Option("--source", help="Description of the data, stored in the table.")
    ] = None,
    cohorts: Annotated[list[str] | None, CohortsOpt] = None,
    json_out: bool = JsonOpt,
    face: str = FaceOpt,
    cache: Path | None = CacheOpt,
    batch: int = BatchOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
) -> None:
    """Measure the score → false-match-rate table that `verify --fmr` uses, on your own labelled photos
    (`faceprint calibrate liveness --help` for the liveness table)."""
    from faceprint.evaluation.calibration import calibrate_identities, calibrate_pairs
    from faceprint.evaluation.pairs import read_pairs
    from faceprint.evaluation.verification import load_cohorts, score_pairs

    if ctx.invoked_subcommand is not None:
        return
    if (pairs_file is None) == (folder is None):
        raise fail("give either --pairs FILE (with --root DIR) or --dir ROOT")
    if out is None:
        raise fail("give --out TABLE.json")
    if out.suffix != ".json":
        raise fail(f"{out}: the calibration table must end in .json")
    pipeline = _pipeline(detector, device, model=model)
    setup = f"detector {pipeline.detector_name}, landmarks {pipeline.landmarker_id}, face {face}"
    if cohorts and pairs_file is None:
        raise fail("--cohorts goes with --pairs")
    setup += ", mirrored chip averaged in" if pipeline.profile.mirror else ""
    if pairs_file is not None:
        pairs = read_pairs(pairs_file, root)
        paths = list(dict.fromkeys(p for pair in pairs for p in (pair.a, pair.b)))
        scored = score_pairs(pairs, _embed(paths, pipeline, face, cache, batch))
        skipped = len(scored.skipped)
        what = source or f"{pairs_file.name}: {scored.scores.size} pairs ({skipped} skipped, no face); {setup}"
        table = calibrate_pairs(scored, pipeline.model_id, what)
        if cohorts:
            _cohort_thresholds(scored, load_cohorts(cohorts), root or pairs_file.parent, table, out, json_out)
    else:
        identities = _identities(folder, people)  # type: ignore[arg-type]
        paths = [p for images in identities.values() for p in images]
        emb = _embed(paths, pipeline, face, cache, batch)
        index = emb.index()
        from faceprint.evaluation.embedding import key

        rows, labels = [], []
        for name, images in identities.items():
            for p in images:
                if key(p) in index:
                    rows.append(index[key(p)])
                    labels.append(name)
        skipped = len(paths) - len(rows)
        where = f"{folder.name}" + (f" restricted to {people.name}" if people else "")  # type: ignore[union-attr]
        what = source or (
            f"{where}: {len(set(labels))} people, {len(rows)} photos ({skipped} without a face), all pairs; {setup}"
        )
        table = calibrate_identities(emb.vectors[np.asarray(rows, dtype=int)], labels, pipeline.model_id, what)
    table.save(out)
    levels = [f for f in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6) if f * table.impostor_pairs >= 1]
    summary = {
        "out": str(out),
        "model": table.model_id,
        "source": table.source,
        "genuine_pairs": table.genuine_pairs,
        "impostor_pairs": table.impostor_pairs,
        "photos_skipped": skipped,
        "thresholds": [
            {"fmr": f, "threshold": round(t, 6), "fnmr": table.fnmr_at(t)}
            for f in levels
            for t in [table.threshold_for(f)]
        ],
    }
    if json_out:
        emit_json(summary)
        return
    typer.echo(
        f"{out}: {table.genuine_pairs:,} genuine and {table.impostor_pairs:,} impostor pairs "
        f"(resolves FMR down to {1 / table.impostor_pairs:.1e}); {skipped} photo(s) skipped"
    )
    typer.echo("| FMR | threshold | FNMR on the same data |\n|---|---|---|")
    for row in summary["thresholds"]:
        typer.echo(f"| {row['fmr']:g} | {row['threshold']:.4f} | {100 * row['fnmr']:.2f}% |")


def _cohort_thresholds(scored, groups, root: Path, table, out: Path, json_out: bool) -> None:
    """``--cohorts``: the per-cohort threshold table (``OUT.cohorts.json``), beside the usual one."""
    from faceprint.evaluation.calibration import cohort_thresholds

    result = cohort_thresholds(scored, groups, root, table)
    path = out.with_suffix(".cohorts.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    if json_out:
        return
    typer.echo(f"{path}: thresholds per cohort (each cohort's own impostor pairs)")
    typer.echo("| cohort | genuine | impostor | FMR | threshold | FNMR | FMR at the overall threshold |")
    typer.echo("|---|---|---|---|---|---|---|")
    for c in result["cohorts"]:
        for row in c["thresholds"]:
            typer.echo(
                f"| {c['cohort']} | {c['genuine_pairs']:,} | {c['impostor_pairs']:,} | {row['fmr']:g} | "
                f"{row['threshold']:.4f} | {100 * row['fnmr']:.2f}% | {100 * row['fmr_at_overall']:.3f}% |"
            )
    for note in result["notes"]:
        typer.echo(f"note: {note}")


# -- liveness -------------------------------------------------------------------------------------------
LiveOpt = typer.Option("--live", help="Bona fide faces: images, or one subfolder per subject.")
AttackOpt = typer.Option(
    "--attack",
    help="Attack faces, one type per folder named by it (nuaa/print → print), with one subfolder per subject; "
    "or a parent of such type folders. Repeat for several types.",
)
LivenessModelOpt = typer.Option(
    None, "--model", help="Liveness model id (default: the installed one, e.g. faceplugin-liveness)."
)
ThreadsOpt = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads (1: one core).")


def _liveness_scores(live: Path, attack: list[Path], pipeline: Pipeline):
    from faceprint.evaluation.liveness import liveness_samples, score_liveness

    samples = liveness_samples(live, attack)
    pipeline.liveness_model  # noqa: B018 -- a missing model fails here, before any image is read
    started = time.perf_counter()
    scored = score_liveness(samples, pipeline, progress=lambda items: progress(items, "liveness"))
    log.info("scored %d images in %.1f s", len(samples), time.perf_counter() - started)
    return scored


def _liveness_pipeline(
    detector: str | None, device: str, threads: int | None, model: str | None, calibration: Path | None = None
) -> Pipeline:
    return Pipeline(
        PipelineConfig(
            detector=detector,
            device=device,
            threads=threads,
            embedder=resolve_model(None),
            liveness=model,
            liveness_calibration=calibration,
        )
    )


@eval_app.command("liveness")
@handle_errors
def eval_liveness(
    live: Annotated[Path, LiveOpt],
    attack: Annotated[list[Path], AttackOpt],
    threshold: Annotated[
        float | None, typer.Option("--threshold", min=0.0, max=1.0, help="Decision threshold on P(live).")
    ] = None,
    apcer: Annotated[
        float | None,
        typer.Option(
            "--apcer",
            min=0.0,
            max=1.0,
            help="Target APCER: of the threshold taken from the liveness table, and of the leave-subjects-out "
            "thresholds (default 0.01).",
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option("--folds", min=2, help="Leave-subjects-out folds (default: one per subject)."),
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="Liveness table (default: the model's shipped one).")
    ] = None,
    json_out: bool = JsonOpt,
    report: Path | None = ReportOpt,
    model: str | None = LivenessModelOpt,
    threads: int | None = ThreadsOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
) -> None:
    """APCER per attack type, BPCER, ACER, BPCER at APCER 1/5/10 %, EER and leave-subjects-out figures."""
    from faceprint.evaluation.liveness import evaluate_liveness
    from faceprint.evaluation.report import liveness_blocks, write_liveness_report
    from faceprint.liveness.calibration import DEFAULT_APCER, UNCALIBRATED_THRESHOLD

    if threshold is not None and apcer is not None:
        raise fail("give --threshold or --apcer, not both")
    target = DEFAULT_APCER if apcer is None else apcer
    pipeline = _liveness_pipeline(detector, device, threads, model, calibration)
    table = pipeline.liveness_calibration  # loads the model: a missing one fails here
    rates = None
    if threshold is not None:
        chosen, chosen_from = threshold, "--threshold"
    elif table is not None:
        chosen = table.default_threshold() if apcer is None else table.threshold_for(target)
        rates = table.rates_at(chosen)
        rule = "the default (APCER 1 %, at least 0.5)" if apcer is None else f"APCER {target:g}"
        chosen_from = f"liveness table, {rule}, calibrated on {table.source}"
    else:
        chosen = UNCALIBRATED_THRESHOLD
        chosen_from = "no liveness table for this model: the uncalibrated default"
    scored = _liveness_scores(live, attack, pipeline)
    result = evaluate_liveness(
        scored,
        model_id=pipeline.liveness_model.model_id,
        source=f"{live} vs {', '.join(map(str, attack))}",
        threshold=chosen,
        threshold_from=chosen_from,
        target_apcer=target,
        folds=folds,
        table_rates=rates,
    )
    _publish(result, report, lambda r: write_liveness_report(result, r), lambda: liveness_blocks(result), json_out)


@calibrate_app.command("liveness")
@handle_errors
def calibrate_liveness(
    live: Annotated[Path, LiveOpt],
    attack: Annotated[list[Path], AttackOpt],
    out: Annotated[Path, typer.Option("--out", help="Liveness table to write (.json).")],
    source: Annotated[
        str | None, typer.Option("--source", help="Description of the data, stored in the table.")
    ] = None,
    json_out: bool = JsonOpt,
    model: str | None = LivenessModelOpt,
    threads: int | None = ThreadsOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
) -> None:
    """Measure the P(live) → APCER/BPCER table that liveness checks take their threshold from.

    All attack types are pooled. Point `PipelineConfig(liveness_calibration=…)` or `eval liveness --calibration`
    at the table, or ship it as the model's table."""
    from faceprint.evaluation.liveness import APCER_LEVELS
    from faceprint.liveness.calibration import LivenessCalibration

    if out.suffix != ".json":
        raise fail(f"{out}: the liveness table must end in .json")
    pipeline = _liveness_pipeline(detector, device, threads, model)
    scored = _liveness_scores(live, attack, pipeline)
    attacks = scored.attacks()
    pooled = np.concatenate(list(attacks.values())) if attacks else np.zeros(0)
    subjects = sorted(set(scored.subjects.tolist()) - {""})
    what = source or (
        f"{live} vs {', '.join(map(str, attack))}: {scored.live.size} bona fide, "
        + ", ".join(f"{a.size} {t}" for t, a in attacks.items())
        + f" attack faces, {len(subjects)} subjects ({len(scored.skipped)} images without a face); "
        f"detector {pipeline.detector_name}"
    )
    model_id = pipeline.liveness_model.model_id
    table = LivenessCalibration.from_scores(model_id, scored.live, pooled, what)
    table.save(out)
    levels = [a for a in APCER_LEVELS if a * table.attacks >= 1]
    summary = {
        "out": str(out),
        "model": model_id,
        "source": table.source,
        "bona_fide": table.bona_fide,
        "attacks": table.attacks,
        "images_skipped": len(scored.skipped),
        "skipped": [{"path": str(p), "kind": k, "reason": r} for p, k, r in scored.skipped],
        "thresholds": [
            {"apcer": a, "threshold": round(t, 6), "measured_apcer": ra, "bpcer": rb}
            for a in levels
            for t in [table.threshold_for(a)]
            for ra, rb in [table.rates_at(t)]
        ],
    }
    if json_out:
        emit_json(summary)
        return
    typer.echo(
        f"{out}: {table.bona_fide:,} bona fide and {table.attacks:,} attack faces (resolves APCER down to "
        f"{1 / table.attacks:.1e}); {len(scored.skipped)} image(s) skipped"
    )
    typer.echo("| APCER | threshold | BPCER on the same data |\n|---|---|---|")
    for row in summary["thresholds"]:
        typer.echo(f"| {row['apcer']:g} | {row['threshold']:.6f} | {100 * row['bpcer']:.2f}% |")


@app.command()
@handle_errors
def bench(
    photos: Annotated[list[Path], typer.Argument(help="Photos or folders (recursed).")],
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed runs per photo.")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs per photo first.")] = 1,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="ONNX Runtime intra-op threads.")] = None,
    json_out: bool = JsonOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
) -> None:
    """Latency p50/p95/p99 of each pipeline stage and throughput, with the hardware and threads used."""
    from faceprint.evaluation.bench import run_bench
    from faceprint.evaluation.report import bench_blocks, to_markdown

    files = expand_images(photos)
    if not files:
        raise fail("no image files found in " + ", ".join(map(str, photos)))
    result = run_bench(
        files,
        _pipeline(detector, device, threads, model),
        repeat=repeat,
        warmup=warmup,
        progress=lambda items: progress(items, "timing"),
    )
    if json_out:
        emit_json(result.to_dict())
    else:
        typer.echo(to_markdown(bench_blocks(result)), nl=False)


@eval_app.command("cluster")
@handle_errors
def eval_cluster(
    folder: Annotated[Path, typer.Option("--dir", help="One subfolder per identity (e.g. LFW).")],
    people: Path | None = PeopleOpt,
    min_photos: Annotated[
        int, typer.Option("--min-photos", min=1, help="Only identities with at least this many photos.")
    ] = 1,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N such identities (sorted by name).")
    ] = None,
    fmr: Annotated[float | None, typer.Option("--fmr", help="Target FMR of the threshold (default 1e-3).")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Explicit cosine threshold.")] = None,
    method: Annotated[str, typer.Option("--method", help="average (default), complete or hdbscan.")] = "average",
    min_faces: Annotated[int, typer.Option("--min-faces", min=1, help="Smallest cluster.")] = 2,
    json_out: bool = JsonOpt,
    report: Path | None = ReportOpt,
    face: str = FaceOpt,
    cache: Path | None = CacheOpt,
    batch: int = BatchOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
) -> None:
    """Cluster one face per photo and score the clusters against the folders: pairwise and BCubed
    precision/recall/F1, clusters vs identities, singleton rate."""
    from faceprint.cluster import Face, cluster
    from faceprint.evaluation.clustering import clustering_scores, clustering_table
    from faceprint.matching import check_one_rule

    check_one_rule(fmr=fmr, fpir=None, threshold=threshold)
    identities = {k: v for k, v in _identities(folder, people).items() if len(v) >= min_photos}
    names = sorted(identities)[:limit] if limit else sorted(identities)
    if len(names) < 2:
        raise fail(f"{folder}: {len(names)} identities with at least {min_photos} photos; clustering needs two")
    pipeline = _pipeline(detector, device, model=model)
    paths = [p for n in names for p in identities[n]]
    owner = {str(p.resolve()): n for n in names for p in identities[n]}
    embeddings = _embed(paths, pipeline, face, cache, batch)
    faces = [Face(k, k, v, path=k) for k, v in zip(embeddings.keys, embeddings.vectors, strict=True) if k in owner]
    started = time.perf_counter()
    result = cluster(faces, model_id=pipeline.model_id, fmr=fmr, threshold=threshold, min_faces=min_faces,
                     method=method)  # fmt: skip
    seconds = time.perf_counter() - started
    scores = clustering_scores(np.array([owner[f.id] for f in faces]), result.labels, outlier_label=0)
    title = f"Clustering {folder} ({len(names)} identities), {pipeline.model_id}, {method} linkage"
    text = (
        clustering_table(scores, title=title)
        + f"\nthreshold {result.threshold:.4f} ({result.rule}); clustering took {seconds:.2f} s; "
        f"{len(embeddings.failures)} photos without a face\n"
    )
    data = {
        **scores.to_dict(),
        "model": pipeline.model_id,
        "method": method,
        "threshold": round(result.threshold, 6),
        "rule": result.rule,
        "seconds": round(seconds, 3),
        "photos": len(paths),
        "photos_without_face": len(embeddings.failures),
    }
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "report.md").write_text(text)
        (report / "report.json").write_text(json.dumps(data, indent=2))
        typer.echo(f"report: {report / 'report.md'}, {report / 'report.json'}", err=True)
    if json_out:
        emit_json(data)
    else:
        typer.echo(text, nl=False)
