"""Generate faceprint's Grafana dashboards as code (grafana-foundation-sdk).

    python deploy/grafana/generate.py [--slo deploy/prometheus/slo.yaml] [--out deploy/grafana]

writes three dashboards: ``faceprint-executive.json`` (decisions, match rates, availability, cost per 1,000
requests), ``faceprint-oncall.json`` (latency, errors, burn rates, readiness, queue) and ``faceprint-debug.json``
(per-stage latency, batch sizes, drift, per-collection/source rates, shadow agreement). They query the
recording rules of deploy/prometheus/ and the service's own metrics; tests/test_ops_prometheus.py parses every
query and checks each metric it names against a real scrape and the recording rules. The committed JSON is
this script's output (a test checks it is up to date).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

HERE = Path(__file__).resolve().parent
SLO = HERE.parent / "prometheus" / "slo.yaml"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
COLL = 'collection=~"$collection"'
RATE = "$__rate_interval"


def _query(expr: str, legend: str = "", ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DS)


def _ts(title: str, unit: str, *queries: tuple[str, str], description: str = "", width: int = 12) -> Any:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DS).span(width).height(8)
    if description:
        panel = panel.description(description)
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + i)))
    return panel


def _stat(title: str, unit: str, expr: str, description: str = "", width: int = 6, legend: str = "") -> Any:
    panel = stat.Panel().title(title).unit(unit).datasource(DS).span(width).height(5).with_target(_query(expr, legend))
    return panel.description(description) if description else panel


def _base(uid: str, title: str, description: str, collection: bool = True) -> Dashboard:
    board = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["faceprint"])
        .refresh("30s")
        .time("now-6h", "now")
        .editable()
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    if collection:
        board = board.with_variable(
            QueryVariable("collection")
            .label("Collection")
            .datasource(DS)
            .query("label_values(faceprint_gallery_subjects, collection)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .all_value(".*")
            .multi(True)
        )
    return board


def executive(slo: dict[str, Any]) -> Dashboard:
    currency = slo["cost"]["currency"]
    objective = float(slo["availability"]["objective"])
    return (
        _base("faceprint-executive", "faceprint / executive", "Decisions, match rates, availability and cost.")
        .with_row(Row("Service level"))
        .with_panel(
            _stat(
                "Availability (3 days)",
                "percentunit",
                "1 - max(faceprint:sli_availability_errors:ratio_rate3d)",
                f"Share of API requests not answered 5xx; the objective is {objective:.3%}.",
            )
        )
        .with_panel(
            _stat(
                "Identify p95 latency",
                "s",
                'max(route:faceprint_http_request_duration_seconds:p95_5m{route="/v1/identify"})',
            )
        )
        .with_panel(_stat("API requests / s", "reqps", "sum(faceprint:http_requests:rate5m)"))
        .with_panel(
            _stat(
                "Cost per 1,000 requests",
                f"currency{currency}",
                "sum(faceprint:cost_per_1k_requests:ratio_rate1h)",
                "CPU seconds per request (last hour) × the CPU-hour price in deploy/prometheus/slo.yaml.",
            )
        )
        .with_row(Row("Decisions"))
        .with_panel(
            _ts(
                "Decisions / s",
                "ops",
                (
                    f"sum by (action, decision) (collection:faceprint_decisions:rate5m{{{COLL}}})",
                    "{{action}} {{decision}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Match rates per collection",
                "percentunit",
                (f"collection:faceprint_identify_match:ratio_rate5m{{{COLL}}}", "identify match {{collection}}"),
                (f"collection:faceprint_verify_same:ratio_rate5m{{{COLL}}}", "verify same {{collection}}"),
                description="Identify: faces matched to an enrolled subject; verify: pairs judged the same person.",
            )
        )
        .with_panel(
            _ts(
                "Availability (1 h windows)",
                "percentunit",
                ("1 - faceprint:sli_availability_errors:ratio_rate1h", "{{job}}"),
            )
        )
        .with_panel(
            _ts(
                "Enrolled subjects",
                "short",
                (f"sum by (collection) (faceprint_gallery_subjects{{{COLL}}})", "{{collection}}"),
            )
        )
    )


def oncall(slo: dict[str, Any]) -> Dashboard:
    budget = 1 - float(slo["availability"]["objective"])
    board = (
        _base(
            "faceprint-oncall",
            "faceprint / on-call",
            "Latency, errors, burn rates, readiness and the admission queue.",
            collection=False,
        )
        .with_row(Row("Now"))
        .with_panel(_stat("Targets up", "short", f'sum(up{{job="{slo["job"]}"}})'))
        .with_panel(_stat("Ready", "short", "min(faceprint_ready)", "1: models loaded and gallery open."))
        .with_panel(_stat("Gallery answers", "short", "min(faceprint_gallery_up)"))
        .with_panel(
            _stat(
                "Alerts firing",
                "short",
                'count(ALERTS{alertname=~"Faceprint.*",alertstate="firing"}) or vector(0)',
            )
        )
        .with_row(Row("Latency and errors"))
        .with_panel(
            _ts(
                "Latency per route",
                "s",
                ('route:faceprint_http_request_duration_seconds:p50_5m{route=~"/v1/.*"}', "p50 {{route}}"),
                ('route:faceprint_http_request_duration_seconds:p95_5m{route=~"/v1/.*"}', "p95 {{route}}"),
                ('route:faceprint_http_request_duration_seconds:p99_5m{route=~"/v1/.*"}', "p99 {{route}}"),
            )
        )
        .with_panel(
            _ts(
                "5xx share per route",
                "percentunit",
                ("route:faceprint_http_errors:ratio_rate5m", "{{route}}"),
            )
        )
        .with_panel(
            _ts(
                "Requests / s by status",
                "reqps",
                ("sum by (status) (route:faceprint_http_requests:rate5m)", "{{status}}"),
            )
        )
        .with_row(Row("Error budget burn rate (1 = spending exactly the budget)"))
        .with_panel(
            _ts(
                "Availability burn rate",
                "short",
                *(
                    (f"faceprint:sli_availability_errors:ratio_rate{w} / {budget:.10g}", w)
                    for w in ("5m", "1h", "6h", "1d")
                ),
                description="Page when 1 h and 5 m exceed 14.4, or 6 h and 30 m exceed 6 (deploy/prometheus/).",
            )
        )
    )
    for target in slo["latency"]:
        route, lat_budget = target["route"], 1 - float(target["objective"])
        board = board.with_panel(
            _ts(
                f"Latency burn rate {route} (over {float(target['threshold_seconds']):g} s)",
                "short",
                *(
                    (f'faceprint:sli_latency_slow:ratio_rate{w}{{route="{route}"}} / {lat_budget:.10g}', w)
                    for w in ("5m", "1h", "6h", "1d")
                ),
            )
        )
    return (
        board.with_row(Row("Capacity"))
        .with_panel(
            _ts(
                "Admission: in flight and queued",
                "short",
                ("sum(faceprint_admission_in_flight)", "in flight"),
                ("sum(faceprint_admission_queue_depth)", "queued"),
            )
        )
        .with_panel(
            _ts(
                "Refused 503 overloaded / s",
                "reqps",
                (f"sum(rate(faceprint_admission_rejections_total[{RATE}]))", "overloaded"),
            )
        )
    )


def debug(_: dict[str, Any]) -> Dashboard:
    psi = "faceprint_drift_psi"
    shadow = "collection, model, shadow_model"
    return (
        _base(
            "faceprint-debug",
            "faceprint / debug",
            "Per-stage latency, batching, drift, per-collection and per-source rates, shadow agreement.",
        )
        .with_row(Row("Pipeline"))
        .with_panel(
            _ts(
                "Stage latency",
                "s",
                ("stage:faceprint_stage_duration_seconds:p50_5m", "p50 {{stage}}"),
                ("stage:faceprint_stage_duration_seconds:p95_5m", "p95 {{stage}}"),
            )
        )
        .with_panel(
            _ts(
                "Embedder batches",
                "short",
                ("faceprint:embed_batch_faces:mean_5m", "mean faces per batch"),
                (f"sum by (reason) (rate(faceprint_embed_batch_waits_total[{RATE}]))", "stopped: {{reason}} / s"),
            )
        )
        .with_row(Row("Per collection, source and action"))
        .with_panel(
            _ts(
                "No-face rate",
                "percentunit",
                (f"collection:faceprint_no_face:ratio_rate5m{{{COLL}}}", "{{collection}} {{action}}"),
            )
        )
        .with_panel(
            _ts(
                "Enrolment rejection rate",
                "percentunit",
                (f"collection:faceprint_enrolment_rejected:ratio_rate5m{{{COLL}}}", "{{collection}}"),
            )
        )
        .with_panel(
            _ts(
                "Liveness attack rate",
                "percentunit",
                ("action:faceprint_liveness_attack:ratio_rate5m", "{{action}}"),
            )
        )
        .with_panel(
            _ts(
                "Identify no-match rate: last hour vs the day before",
                "percentunit",
                (f"collection:faceprint_identify_no_match:ratio_rate1h{{{COLL}}}", "1 h {{collection}}"),
                (
                    f"collection:faceprint_identify_no_match:ratio_rate1d{{{COLL}}} offset 1h",
                    "day before {{collection}}",
                ),
            )
        )
        .with_row(Row("Drift against the baseline window (faceprint drift)"))
        .with_panel(
            _ts(
                "Population stability index",
                "short",
                (f"{psi}{{{COLL}}}", "{{collection}}/{{source}} {{feature}}"),
                description="0.1: moderate shift; 0.25: a real shift (FaceprintDriftHigh).",
            )
        )
        .with_panel(
            _ts(
                "Kolmogorov-Smirnov statistic and p-value",
                "short",
                (f"faceprint_drift_ks_statistic{{{COLL}}}", "D {{collection}}/{{source}} {{feature}}"),
                (f"faceprint_drift_ks_pvalue{{{COLL}}}", "p {{collection}}/{{source}} {{feature}}"),
            )
        )
        .with_row(Row("Shadow model (faceprint canary report)"))
        .with_panel(
            _ts(
                "Shadow agreement",
                "percentunit",
                (
                    f"1 - collection:faceprint_shadow_disagreement:ratio_rate1h{{{COLL}}}",
                    "{{shadow_model}} {{collection}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Shadow score shift (shadow - serving best score)",
                "short",
                *(
                    (
                        f"histogram_quantile({q}, sum by ({shadow}, le) "
                        f"(rate(faceprint_shadow_score_shift_bucket{{{COLL}}}[{RATE}])))",
                        f"p{round(q * 100)} {{{{shadow_model}}}} {{{{collection}}}}",
                    )
                    for q in (0.05, 0.5, 0.95)
                ),
            )
        )
        .with_panel(
            _ts(
                "Shadow latency p95 and shadowed requests",
                "s",
                (
                    f"histogram_quantile(0.95, sum by ({shadow}, le) "
                    f"(rate(faceprint_shadow_duration_seconds_bucket{{{COLL}}}[{RATE}])))",
                    "p95 {{shadow_model}} {{collection}}",
                ),
                (
                    f"sum by ({shadow}) (rate(faceprint_shadow_requests_total{{{COLL}}}[{RATE}]))",
                    "req/s {{shadow_model}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Models serving and shadowing",
                "short",
                (f"faceprint_model_info{{{COLL}}}", "{{role}} {{model}} {{collection}} {{sha256}}"),
            )
        )
    )


DASHBOARDS = {"faceprint-executive.json": executive, "faceprint-oncall.json": oncall, "faceprint-debug.json": debug}


def generate(slo_path: Path = SLO) -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    slo = yaml.safe_load(slo_path.read_text())
    out = {}
    for name, build in DASHBOARDS.items():
        model = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build(slo).build()))
        for number, panel in enumerate(model["panels"], start=1):
            panel["id"] = number  # unique ids: Grafana links and edits panels by id
            if panel.get("options", {}) is None:
                del panel["options"]  # unset: the panel plugin's defaults
        out[name] = json.dumps(model, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slo", type=Path, default=SLO)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for name, text in generate(args.slo).items():
        (args.out / name).write_text(text)
        print(args.out / name)


if __name__ == "__main__":
    main()
