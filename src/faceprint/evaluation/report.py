"""Reports: Markdown for terminals and files, the same content as HTML, and PNG plots (matplotlib, Agg).

A report is a list of blocks (heading, paragraph, table, image) rendered twice, so report.md and
report.html never disagree. matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceprint.evaluation import metrics as m
from faceprint.evaluation.bench import BenchResult
from faceprint.evaluation.detection import DetectionResult
from faceprint.evaluation.identification import IdentificationResult
from faceprint.evaluation.liveness import BONA_FIDE, LivenessEvaluation, liveness_curve
from faceprint.evaluation.verification import VerificationResult


@dataclass(frozen=True)
class Block:
    kind: str  # "h1" | "h2" | "p" | "table" | "img" | "list"
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()  # table: first row is the header; list: one item per row


def pct(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def num(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "list":
            out.append("\n".join(f"- {r[0]}" for r in b.rows))
        elif b.kind == "img":
            out.append(f"![{b.text}]({b.text})")
        elif b.kind == "table":
            header, *body = b.rows
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in body]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
        "img{max-width:100%}</style></head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            parts.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(r[0])}</li>" for r in b.rows) + "</ul>")
        elif b.kind == "img":
            parts.append(f"<p><img src='{e(b.text)}' alt='{e(b.text)}'></p>")
        elif b.kind == "table":
            header, *body = b.rows
            rows = ["<tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>"]
            rows += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body]
            parts.append("<table>" + "".join(rows) + "</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- verification ---------------------------------------------------------------------------------------
def cohort_drivers(c: dict) -> list[str]:
    """Which cohort drives each kind of error, in words, plus what was left out of the cohorts."""
    out = []
    for rate, what in (("fnmr", "false non-matches"), ("fmr", "false matches")):
        d = (c.get("drivers") or {}).get(rate)
        if d is None:
            continue
        out.append(
            f"The {d['cohort']} cohort drives the {what}: {d['error_share']:.0%} of them from {d['pair_share']:.0%} "
            f"of the within-cohort pairs ({rate.upper()} {pct(d['rate'], 3)} against {pct(d['best_rate'], 3)} for "
            f"{d['best_cohort']})."
        )
    if c.get("unlabelled_pairs"):
        out.append(f"{c['unlabelled_pairs']} pair(s) have a photo without a cohort label and count for no cohort.")
    out += list(c.get("notes", []))
    return out


def verification_blocks(r: VerificationResult, images: bool = False, max_skipped: int = 50) -> list[Block]:
    scored = r.scored
    blocks = [
        Block("h1", f"Verification: {r.source}"),
        Block(
            "p",
            f"Model {r.model_id}. {scored.scores.size:,} pairs scored ({r.genuine_pairs:,} genuine, "
            f"{r.impostor_pairs:,} impostor); {len(scored.skipped):,} skipped for want of a face.",
        ),
    ]
    summary = [
        ("metric", "value", "threshold"),
        ("accuracy at the best threshold", pct(r.best_accuracy), num(r.best_threshold)),
    ]
    if r.configured_threshold is not None:
        summary.append(
            (
                f"accuracy at the configured threshold (FMR {r.default_fmr:g} by calibration)",
                pct(r.configured_accuracy),
                num(r.configured_threshold),
            )
        )
        summary.append(("  FMR / FNMR measured there", f"{pct(r.configured_fmr, 3)} / {pct(r.configured_fnmr)}", ""))
    summary += [
        ("accuracy, skipped pairs counted as errors", pct(r.accuracy_skipped_as_errors), num(r.best_threshold)),
        ("equal error rate (EER)", pct(r.eer), num(r.eer_threshold)),
        ("ROC AUC", num(r.auc, 5), ""),
    ]
    if r.kfold is not None:
        k = r.kfold
        summary.append(
            (
                f"{len(k.accuracies)}-fold accuracy (threshold from the other folds)",
                f"{pct(k.mean)} ± {pct(k.std)} (s.e. {pct(k.standard_error)})",
                f"{min(k.thresholds):.4f}–{max(k.thresholds):.4f}",
            )
        )
        summary.append(("  the same, skipped pairs counted as errors", pct(r.kfold_skipped_as_errors), ""))
    p = r.default_point
    summary.append(
        (
            f"FNMR at FMR {r.default_fmr:g} (threshold from this data)",
            pct(p.fnmr) if p.supported else f"not resolvable: {p.reason}",
            num(p.threshold) if p.supported else "",
        )
    )
    blocks.append(Block("table", rows=tuple(summary)))
    blocks.append(Block("h2", "TAR at FAR"))
    rows = [("FAR", "TAR", "threshold", "measured FAR")]
    for op in r.tar_at_far:
        if op.supported:
            rows.append((f"{op.target_fmr:g}", pct(op.tar), num(op.threshold), f"{op.fmr:.2e}"))
        else:
            rows.append((f"{op.target_fmr:g}", "not resolvable", "", op.reason))
    blocks.append(Block("table", rows=tuple(rows)))
    blocks.append(Block("h2", "Threshold table"))
    blocks.append(
        Block(
            "p",
            "For each target FMR: the threshold that reaches it on this data, and the calibrated threshold "
            "(the one `faceprint verify --fmr` uses) with the FMR and FNMR it gives on this data.",
        )
    )
    rows = [("target FMR", "threshold (this data)", "TAR", "calibrated threshold", "FMR here", "FNMR here")]
    for row in r.threshold_table:
        mp = row.measured
        rows.append(
            (
                f"{row.target_fmr:g}",
                num(mp.threshold) if mp.supported else "not resolvable",
                pct(mp.tar) if mp.supported else "—",
                num(row.calibrated_threshold),
                "—" if row.calibrated_fmr is None else f"{row.calibrated_fmr:.2e}",
                pct(row.calibrated_fnmr),
            )
        )
    blocks.append(Block("table", rows=tuple(rows)))
    if r.kfold is not None:
        blocks.append(Block("h2", "Folds"))
        rows = [("fold", "pairs", "accuracy", "threshold")]
        rows += [
            (str(i + 1), str(n), pct(a), num(t))
            for i, (a, t, n) in enumerate(zip(r.kfold.accuracies, r.kfold.thresholds, r.kfold.pairs, strict=True))
        ]
        blocks.append(Block("table", rows=tuple(rows)))
    if r.cohorts is not None:
        c = r.cohorts
        blocks.append(Block("h2", "Cohorts"))
        blocks.append(Block("p", f"At threshold {c['threshold']:.4f} ({c['threshold_from']})."))
        rows = [("cohort", "genuine pairs", "impostor pairs", "FNMR", "FMR")]
        rows += [
            (x["cohort"], str(x["genuine_pairs"]), str(x["impostor_pairs"]), pct(x["fnmr"]), pct(x["fmr"], 3))
            for x in c["cohorts"]
        ]
        blocks.append(Block("table", rows=tuple(rows)))
        blocks.append(
            Block("p", f"Worst/best cohort ratio: FMR {num(c['fmr_ratio'], 2)}, FNMR {num(c['fnmr_ratio'], 2)}.")
        )
        blocks += [Block("p", line) for line in cohort_drivers(c)]
    if images:
        blocks.append(Block("h2", "Curves"))
        blocks += [Block("img", name) for name in ("roc.png", "det.png", "histogram.png")]
    if r.notes:
        blocks.append(Block("h2", "Notes"))
        blocks.append(Block("list", rows=tuple((n,) for n in r.notes)))
    if scored.skipped:
        blocks.append(Block("h2", f"Skipped pairs ({len(scored.skipped)})"))
        items = [(f"{p.a} — {p.b} ({'same' if p.same else 'different'}): {why}",) for p, why in scored.skipped]
        if len(items) > max_skipped:
            items = [*items[:max_skipped], (f"… and {len(items) - max_skipped} more (all are in the JSON output)",)]
        blocks.append(Block("list", rows=tuple(items)))
    return blocks


def plot_verification(r: VerificationResult, out_dir: Path) -> list[Path]:
    """roc.png (TAR against log FAR), det.png (FNMR against FMR, log-log) and histogram.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen, imp = r.scored.genuine, r.scored.impostor
    roc = m.roc_curve(gen, imp)
    floor = 1.0 / imp.size
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4.5))
    x = np.maximum(roc.fmr, floor / 2)
    ax.step(x, roc.tar, where="post")
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.axvline(floor, color="grey", ls=":", lw=1, label=f"1/impostor pairs = {floor:.0e}")
    ax.set_xlabel("false accept rate (FAR = FMR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(f"ROC — {r.model_id} (AUC {r.auc:.4f})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    paths.append(_save(fig, out_dir / "roc.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    fnmr_floor = 1.0 / gen.size
    ax.step(np.maximum(roc.fmr, floor / 2), np.maximum(roc.fnmr, fnmr_floor / 2), where="post")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(fnmr_floor / 2, 1)
    ax.plot([max(r.eer, floor / 2)], [max(r.eer, fnmr_floor / 2)], "o", label=f"EER {100 * r.eer:.2f}%")
    ax.set_xlabel("false match rate (FMR)")
    ax.set_ylabel("false non-match rate (FNMR)")
    ax.set_title(f"DET — {r.model_id}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    paths.append(_save(fig, out_dir / "det.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(min(gen.min(), imp.min()), max(gen.max(), imp.max()), 60)
    ax.hist(imp, bins=bins, alpha=0.6, density=True, label=f"impostor ({imp.size:,})")
    ax.hist(gen, bins=bins, alpha=0.6, density=True, label=f"genuine ({gen.size:,})")
    ax.axvline(r.best_threshold, color="k", ls="--", lw=1, label=f"best-accuracy threshold {r.best_threshold:.3f}")
    if r.configured_threshold is not None:
        ax.axvline(r.configured_threshold, color="r", ls=":", lw=1, label=f"configured {r.configured_threshold:.3f}")
    ax.set_xlabel("score (cosine similarity)")
    ax.set_ylabel("density")
    ax.set_title("Score distributions")
    ax.legend(loc="upper left", fontsize="small")
    paths.append(_save(fig, out_dir / "histogram.png"))
    return paths


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path


def write_verification_report(r: VerificationResult, out_dir: Path) -> list[Path]:
    """report.md, report.html and the three plots in ``out_dir`` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = plot_verification(r, out_dir)
    return [*_write_docs(verification_blocks(r, images=True), out_dir, f"Verification: {r.source}"), *paths]


def _write_docs(blocks: list[Block], out_dir: Path, title: str) -> list[Path]:
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(blocks))
    page.write_text(to_html(blocks, title))
    return [md, page]


# -- identification, detection, bench -------------------------------------------------------------------
def identification_blocks(r: IdentificationResult, source: str) -> list[Block]:
    blocks = [
        Block("h1", f"Identification: {source}"),
        Block(
            "p",
            f"{r.identities:,} identities enrolled with {r.enrol} photo(s) each; {r.mated_probes:,} mated probes, "
            f"{r.nonmated_probes:,} non-mated probes (distractors); {len(r.skipped):,} photo(s) skipped for "
            "want of a face.",
        ),
        Block(
            "table",
            rows=(
                ("metric", "value"),
                ("rank-1 identification rate", pct(r.rank(1))),
                ("rank-5 identification rate", pct(r.rank(5))),
                ("rank-10 identification rate", pct(r.rank(10))),
            ),
        ),
        Block("h2", "Open set: FNIR at FPIR"),
    ]
    rows = [("FPIR", "FNIR", "threshold", "measured FPIR")]
    for p in r.open_set:
        if p.supported:
            rows.append((f"{p.target_fpir:g}", pct(p.fnir), num(p.threshold), f"{p.fpir:.2e}"))
        else:
            rows.append((f"{p.target_fpir:g}", "not resolvable", "", p.reason))
    if not r.open_set:
        rows.append(("—", "no non-mated probes", "", ""))
    blocks.append(Block("table", rows=tuple(rows)))
    return blocks


def detection_blocks(r: DetectionResult, source: str) -> list[Block]:
    rows = [("face size", "faces", "missed", "miss rate")]
    rows += [(x["size"], str(x["faces"]), str(x["missed"]), pct(x["miss_rate"], 1)) for x in r.by_size]
    blocks = [
        Block("h1", f"Detection: {source}"),
        Block("p", f"{r.images} images, {r.faces} faces, {r.detections} detections; match at IoU ≥ {r.iou}."),
        Block(
            "table",
            rows=(
                ("metric", "value"),
                (f"average precision (IoU {r.iou})", pct(r.pr.average_precision)),
                ("recall (all detections)", pct(r.recall)),
                ("precision (all detections)", pct(r.precision)),
            ),
        ),
        Block("h2", "Miss rate by face size (√(w·h) of the true box)"),
        Block("table", rows=tuple(rows)),
    ]
    if r.failures:
        blocks.append(Block("list", rows=tuple((f"{k}: {v}",) for k, v in r.failures.items())))
    return blocks


def bench_blocks(r: BenchResult) -> list[Block]:
    env = r.environment
    rows = [("stage", "runs", "mean ms", "p50 ms", "p95 ms", "p99 ms", "per second")]
    rows += [
        (s.stage, str(s.runs), f"{s.mean_ms:.2f}", f"{s.p50_ms:.2f}", f"{s.p95_ms:.2f}", f"{s.p99_ms:.2f}",
         f"{s.per_second:.1f}")
        for s in r.stages
    ]  # fmt: skip
    return [
        Block("h1", "Pipeline latency"),
        Block(
            "p",
            f"{r.photos} photos ({r.faces} faces), {r.repeat} timed runs each; throughput "
            f"{r.throughput:.2f} photos/s on one calling thread.",
        ),
        Block("table", rows=tuple(rows)),
        Block(
            "list",
            rows=(
                (f"CPU: {env['cpu']} ({env['usable_cpus']} of {env['logical_cpus']} logical CPUs usable)",),
                (f"threads: {env['threads']}; env: {env['env'] or 'no thread variables set'}",),
                (f"onnxruntime {env['onnxruntime']} on {env['device']}; providers {', '.join(env['providers'])}",),
                (f"detector {env['detector']}, embedder {env['embedder']}; Python {env['python']}",),
            ),
        ),
    ]


def plot_cmc(r: IdentificationResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ranks = np.arange(1, r.cmc.size + 1)
    ax.plot(ranks, r.cmc, marker="o")
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_title("CMC")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_pr(r: DetectionResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(r.pr.recall, r.pr.precision)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision/recall (AP {100 * r.pr.average_precision:.1f}% at IoU {r.iou})")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def write_identification_report(r: IdentificationResult, source: str, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_cmc(r, out_dir / "cmc.png")
    blocks = [*identification_blocks(r, source), Block("img", "cmc.png")]
    return [*_write_docs(blocks, out_dir, f"Identification: {source}"), png]


def write_detection_report(r: DetectionResult, source: str, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_pr(r, out_dir / "pr.png")
    blocks = [*detection_blocks(r, source), Block("img", "pr.png")]
    return [*_write_docs(blocks, out_dir, f"Detection: {source}"), png]


# -- liveness -------------------------------------------------------------------------------------------
def _group_table(rows: tuple, first: str) -> Block:
    out = [(first, "bona fide", "BPCER", "attacks", "APCER", "mean P(live) live / attack")]
    out += [
        (
            r.name,
            str(r.bona_fide),
            pct(r.bpcer),
            str(r.attacks),
            pct(r.apcer),
            f"{num(r.mean_live_score, 3)} / {num(r.mean_attack_score, 3)}",
        )
        for r in rows
    ]
    return Block("table", rows=tuple(out))


def liveness_blocks(r: LivenessEvaluation, images: bool = False, max_skipped: int = 50) -> list[Block]:
    s = r.scored
    attacks = s.attacks()
    counts = ", ".join(f"{a.size:,} {t}" for t, a in attacks.items())
    skipped = len(s.skipped)
    blocks = [
        Block("h1", f"Liveness: {r.source}"),
        Block(
            "p",
            f"Model {r.model_id}. {s.live.size:,} bona fide and {counts} attack faces scored (the largest face "
            f"of each image); {skipped:,} image(s) skipped (no face or unreadable, listed below). Liveness check "
            f"alone: {r.ms_per_face['median']:.2f} ms per face (median, one face per call).",
        ),
    ]
    if r.lso is not None:
        lso = r.lso
        blocks.append(Block("h2", f"Leave-subjects-out ({len(lso.folds)} folds), target APCER {lso.target_apcer:g}"))
        blocks.append(
            Block(
                "p",
                "Each fold's threshold is chosen for the target APCER on the other subjects' frames and applied "
                "to the held-out subjects; the counts are pooled. These are the figures to expect on new people.",
            )
        )
        rows = [("metric", "value")]
        rows += [(f"APCER ({t})", pct(v)) for t, v in lso.apcer_by_type.items()]
        rows += [("APCER (worst type)", pct(lso.apcer)), ("BPCER", pct(lso.bpcer)), ("ACER", pct(lso.acer))]
        blocks.append(Block("table", rows=tuple(rows)))
        rows = [("fold", "held-out subjects", "threshold", "bona fide refused", "attacks passed")]
        rows += [
            (
                str(i + 1),
                ", ".join(f.subjects),
                num(f.threshold, 6),
                f"{f.refused}/{f.bona_fide}",
                ", ".join(f"{k}/{n} {t}" for t, (n, k) in f.attacks.items()),
            )
            for i, f in enumerate(lso.folds)
        ]
        blocks.append(Block("table", rows=tuple(rows)))
        if lso.notes:
            blocks.append(Block("list", rows=tuple((n,) for n in lso.notes)))
    blocks.append(Block("h2", f"At threshold {r.threshold:.6f} ({r.threshold_from})"))
    rows = [("metric", "measured here", "stated by the table")]
    table_apcer, table_bpcer = r.table_rates if r.table_rates is not None else (None, None)
    rows += [(f"APCER ({t})", pct(v), "") for t, v in r.apcer_by_type.items()]
    rows += [
        ("APCER (worst type)", pct(r.apcer), pct(table_apcer)),
        ("BPCER", pct(r.bpcer), pct(table_bpcer)),
        ("ACER", pct(r.acer), ""),
        ("EER", pct(r.eer), f"at threshold {r.eer_threshold:.6f}"),
    ]
    blocks.append(Block("table", rows=tuple(rows)))
    blocks.append(Block("h2", "BPCER at APCER (thresholds chosen on this data)"))
    rows = [("APCER", "BPCER", "threshold", "measured APCER")]
    for p in r.points:
        if p.supported:
            rows.append((f"{p.target_apcer:g}", pct(p.bpcer), num(p.threshold, 6), pct(p.apcer)))
        else:
            rows.append((f"{p.target_apcer:g}", "not resolvable", "", p.reason))
    blocks.append(Block("table", rows=tuple(rows)))
    blocks.append(Block("h2", "Per attack type (at the threshold above)"))
    blocks.append(_group_table(r.by_type, "attack type"))
    if r.by_subject:
        blocks.append(Block("h2", "Per subject (at the threshold above)"))
        blocks.append(_group_table(r.by_subject, "subject"))
    if images:
        blocks.append(Block("h2", "Curves"))
        blocks += [Block("img", name) for name in ("det.png", "histogram.png")]
    if r.notes:
        blocks.append(Block("h2", "Notes"))
        blocks.append(Block("list", rows=tuple((n,) for n in r.notes)))
    if s.skipped:
        blocks.append(Block("h2", f"Skipped images ({skipped})"))
        items = [(f"{p} ({k}): {why}",) for p, k, why in s.skipped]
        if len(items) > max_skipped:
            items = [*items[:max_skipped], (f"… and {len(items) - max_skipped} more (all are in the JSON output)",)]
        blocks.append(Block("list", rows=tuple(items)))
    return blocks


def plot_liveness(r: LivenessEvaluation, out_dir: Path) -> list[Path]:
    """det.png (BPCER against worst-type APCER, log-log) and histogram.png (P(live) of bona fide and attacks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live, attacks = r.scored.live, r.scored.attacks()
    curve = liveness_curve(live, attacks)
    a_floor = 1.0 / min(a.size for a in attacks.values())
    b_floor = 1.0 / live.size
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.step(np.maximum(curve.fmr, a_floor / 2), np.maximum(curve.fnmr, b_floor / 2), where="post")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(a_floor / 2, 1)
    ax.set_ylim(b_floor / 2, 1)
    ax.plot([max(r.eer, a_floor / 2)], [max(r.eer, b_floor / 2)], "o", label=f"EER {100 * r.eer:.2f}%")
    ax.plot([max(r.apcer, a_floor / 2)], [max(r.bpcer, b_floor / 2)], "s", label=f"threshold {r.threshold:.4f}")
    ax.set_xlabel("APCER (worst attack type; values at 0 drawn at ½ / attacks)")
    ax.set_ylabel("BPCER")
    ax.set_title(f"DET — {r.model_id}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    paths = [_save(fig, out_dir / "det.png")]

    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(0.0, 1.0, 51)
    for name, values in [(BONA_FIDE, live), *attacks.items()]:
        ax.hist(values, bins=bins, alpha=0.6, label=f"{name} ({values.size:,})")
    ax.axvline(r.threshold, color="k", ls="--", lw=1, label=f"threshold {r.threshold:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("P(live)")
    ax.set_ylabel("faces")
    ax.set_title("Score distributions")
    ax.legend(loc="upper center", fontsize="small")
    paths.append(_save(fig, out_dir / "histogram.png"))
    return paths


def write_liveness_report(r: LivenessEvaluation, out_dir: Path) -> list[Path]:
    """report.md, report.html, det.png and histogram.png in ``out_dir`` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = plot_liveness(r, out_dir)
    return [*_write_docs(liveness_blocks(r, images=True), out_dir, f"Liveness: {r.source}"), *paths]
