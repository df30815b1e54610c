"""deploy/: SLO recording rules, burn-rate and failure-mode alerts, Grafana dashboards, runbooks (issue 17).

The rule files and dashboards are generated from deploy/prometheus/slo.yaml and must be the committed output.
Debian's ``promtool`` (package ``prometheus``) checks the rules and runs the unit test of every alert. End to
end, a real Prometheus (the same package) scrapes a real ``faceprint serve`` on loopback every second, real
requests with real photos go through, and the recording rules evaluate to numbers; every dashboard query parses
(``promql-parser``), names only metrics the server exports or the rules record, and runs on that Prometheus.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import promql_parser
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image as PILImage

from faceprint.service.app import create_app
from faceprint.service.settings import Settings
from tests.conftest import IDENTITIES
from tests.test_service_ui import free_port, stop_server, wait_until_ready

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
OPERATIONS = REPO / "docs" / "operations.md"
INSTALL_HINT = "install Debian's prometheus package (apt-get install -y prometheus): it has promtool and prometheus"
CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]
ENROL = [IDENTITIES / "person01" / n for n in ("img27.jpg", "img28.jpg")]
PROBES = [IDENTITIES / "person01" / "img43.jpg", IDENTITIES / "person02" / "img51.jpg"]
# Series Prometheus itself makes (not scraped from faceprint) that rules and dashboards may use.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.parent.name + "_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def _tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}", pytrace=False)
    return found


def _rules(kind: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(PROM.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [r for r in group["rules"] if kind in r]
    return out


def alert_names() -> list[str]:
    return [r["alert"] for r in _rules("alert")]


def recorded_names() -> set[str]:
    return {r["record"] for r in _rules("record")}


# -- generated files ------------------------------------------------------------------------------------------
def test_rule_files_are_the_generators_output_for_the_committed_slo() -> None:
    generated = _load(PROM / "generate.py").generate(PROM / "slo.yaml")
    assert set(generated) == {p.name for p in PROM.glob("*.rules.yml")}
    for name, text in generated.items():
        assert (PROM / name).read_text() == text, f"{name} is stale: run python deploy/prometheus/generate.py"


def test_dashboards_are_the_generators_output() -> None:
    generated = _load(GRAFANA / "generate.py").generate(PROM / "slo.yaml")
    assert set(generated) == {p.name for p in GRAFANA.glob("*.json")}
    for name, text in generated.items():
        assert (GRAFANA / name).read_text() == text, f"{name} is stale: run python deploy/grafana/generate.py"


def test_an_edited_slo_changes_the_thresholds(tmp_path: Path) -> None:
    slo = yaml.safe_load((PROM / "slo.yaml").read_text())
    slo["availability"]["objective"] = 0.99
    slo["latency"][0]["threshold_seconds"] = 0.25
    (tmp_path / "slo.yaml").write_text(yaml.safe_dump(slo))
    generated = _load(PROM / "generate.py").generate(tmp_path / "slo.yaml")
    alerts = generated["faceprint-alerts.rules.yml"]
    assert "faceprint:sli_availability_errors:ratio_rate1h > 14.4 * 0.01" in alerts
    assert 'le="0.25"' in generated["faceprint-recording.rules.yml"]
    slo["latency"][0]["threshold_seconds"] = 0.3  # not a bucket bound: refused, not silently wrong
    (tmp_path / "slo.yaml").write_text(yaml.safe_dump(slo))
    with pytest.raises(SystemExit, match="not a bucket bound"):
        _load(PROM / "generate.py").generate(tmp_path / "slo.yaml")


# -- promtool -------------------------------------------------------------------------------------------------
def test_promtool_checks_the_rule_files() -> None:
    files = sorted(str(p) for p in PROM.glob("*.rules.yml"))
    done = subprocess.run([_tool("promtool"), "check", "rules", *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(files)


def test_every_alert_has_a_passing_promtool_unit_test() -> None:
    tests = sorted(PROM.glob("tests/*.test.yml"))
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in tests:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alert_names())
    assert len(names) >= 11
    assert names <= fired, f"alerts no unit test fires: {sorted(names - fired)}"
    assert names <= quiet, f"alerts without a near-miss test that stays quiet: {sorted(names - quiet)}"
    for path in tests:
        done = subprocess.run(
            [_tool("promtool"), "test", "rules", path.name], cwd=path.parent, capture_output=True, text=True
        )
        assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


# -- runbooks -------------------------------------------------------------------------------------------------
def test_every_alert_has_a_runbook_section() -> None:
    doc = OPERATIONS.read_text()
    headings = {m.group(1).strip() for m in re.finditer(r"^#{2,4} (.+)$", doc, re.MULTILINE)}
    for rule in _rules("alert"):
        name = rule["alert"]
        assert name in headings, f"docs/operations.md has no '### {name}' runbook section"
        assert rule["annotations"]["runbook_url"].endswith(f"operations.md#{name.lower()}")
        section = doc.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        for part in ("**Meaning**", "**Dashboard**", "**Diagnose**", "**Fix**"):
            assert part in section, f"the runbook of {name} lacks {part}"


# -- the signals the failure-mode alerts use --------------------------------------------------------------------
def test_a_gallery_that_cannot_be_read_is_reported_not_a_failed_scrape(
    tmp_path: Path, hog_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FaceprintGalleryUnavailable fires on faceprint_gallery_up 0: /metrics must still answer when the gallery
    fails (here: closed under the running service), or the alert would be FaceprintDown instead."""
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    settings = Settings(
        home=tmp_path, gallery=tmp_path / "g", service_db=tmp_path / "s.sqlite3", detector="hog", metrics_public=True
    )
    app = create_app(settings, pipeline=hog_pipeline)
    with TestClient(app) as client:
        assert "faceprint_gallery_up 1.0" in client.get("/metrics").text.splitlines()
        app.state.gallery.close()
        scrape = client.get("/metrics")
        assert scrape.status_code == 200 and "faceprint_gallery_up 0.0" in scrape.text.splitlines()
        assert "faceprint_ready 1.0" in scrape.text.splitlines()  # so GalleryUnavailable, not ModelNotReady


# -- a real Prometheus scraping a real faceprint serve ------------------------------------------------------------
def _no_face_jpeg() -> bytes:
    y, x = np.mgrid[0:240, 0:320]
    arr = np.stack([(x * 0.8) % 256, (y * 1.1) % 256, ((x + y) * 0.5) % 256], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _photo(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/jpeg")


class Stack:
    def __init__(self, server: str, key: str, prometheus: str, metrics_text: str, subject: str) -> None:
        self.server = server
        self.subject = subject
        self.auth = {"Authorization": f"Bearer {key}"}
        self.prometheus = prometheus
        self.metrics_text = metrics_text

    def query(self, expr: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]

    def traffic(self) -> None:
        for probe in PROBES:
            answer = httpx.post(
                f"{self.server}/v1/identify", files={"image": _photo(probe)}, headers=self.auth, timeout=60
            )
            assert answer.status_code == 200, answer.text
        empty = httpx.post(
            f"{self.server}/v1/identify",
            files={"image": ("scene.jpg", _no_face_jpeg(), "image/jpeg")},
            headers=self.auth,
        )
        assert empty.status_code == 200 and empty.json()["faces"] == []
        same = httpx.post(
            f"{self.server}/v1/verify",
            files={"image_a": _photo(ENROL[0]), "image_b": _photo(PROBES[0])},
            headers=self.auth,
            timeout=60,
        )
        assert same.status_code == 200 and same.json()["same_person"] is True
        refused = httpx.post(
            f"{self.server}/v1/subjects/{self.subject}/faces",
            files={"image": ("scene.jpg", _no_face_jpeg(), "image/jpeg")},
            headers=self.auth,
        )
        assert refused.status_code == 422 and refused.json()["code"] == "no_usable_face"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[Stack]:
    prometheus_bin = _tool("prometheus")
    home = tmp_path_factory.mktemp("ops-home")
    env = {
        **os.environ,
        "FACEPRINT_HOME": str(home),
        "FACEPRINT_KEY": secrets.token_hex(32),
        "FACEPRINT_DETECTOR": "hog",
        "FACEPRINT_CACHE_DIR": str(cache_dir),
    }
    made = subprocess.run(
        [*CLI, "keys", "create", "--scope", "admin", "--name", "prometheus"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip()
    port, prom_port = free_port(), free_port()
    server = f"http://127.0.0.1:{port}"
    config = home / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in sorted(PROM.glob("*.rules.yml"))],
                "scrape_configs": [
                    {
                        "job_name": "faceprint",
                        "authorization": {"credentials": key},
                        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                    }
                ],
            }
        )
    )
    server_log = (home / "server.log").open("w")
    prom_log = (home / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=server_log, stderr=server_log
    )
    prom = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=prom_log,
        stderr=prom_log,
    )
    try:
        wait_until_ready(proc, server, home / "server.log", 120)
        prometheus = f"http://127.0.0.1:{prom_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{prometheus}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert prom.poll() is None and time.monotonic() < deadline, (home / "prometheus.log").read_text()
            time.sleep(0.25)
        auth = {"Authorization": f"Bearer {key}"}
        subject = httpx.post(f"{server}/v1/subjects", json={"name": "Ada"}, headers=auth).json()
        enrolled = httpx.post(
            f"{server}/v1/subjects/{subject['id']}/faces",
            files=[("image", _photo(p)) for p in ENROL],
            headers=auth,
            timeout=60,
        )
        assert enrolled.status_code == 201, enrolled.text
        metrics_text = httpx.get(f"{server}/metrics", headers=auth).text
        yield Stack(server, key, prometheus, metrics_text, subject["id"])
    finally:
        prom.terminate()
        stop_server(proc)
        try:
            prom.wait(15)
        except subprocess.TimeoutExpired:
            prom.kill()
        server_log.close()
        prom_log.close()


def _value(data: dict[str, Any]) -> list[tuple[dict[str, str], float]]:
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def test_prometheus_evaluates_the_recording_rules_on_a_real_server(stack: Stack) -> None:
    # Counters appear with their first increment; Prometheus' rate() sees increases after the first scrape, so
    # traffic comes in two rounds a few scrapes apart.
    stack.traffic()
    time.sleep(3)
    stack.traffic()
    wanted = {
        "faceprint:http_requests:rate5m": lambda v: v > 0,
        "faceprint:sli_availability_errors:ratio_rate5m": lambda v: v == 0,
        'faceprint:sli_latency_slow:ratio_rate5m{route="/v1/identify"}': lambda v: 0 <= v <= 1,
        'route:faceprint_http_request_duration_seconds:p95_5m{route="/v1/identify"}': lambda v: 0 < v < 30,
        'stage:faceprint_stage_duration_seconds:p95_5m{stage="detect"}': lambda v: 0 < v < 30,
        'collection:faceprint_identify_match:ratio_rate5m{collection="default"}': lambda v: 0 < v < 1,
        'collection:faceprint_identify_no_match:ratio_rate5m{collection="default"}': lambda v: 0 < v < 1,
        'collection:faceprint_verify_same:ratio_rate5m{collection="default"}': lambda v: v == 1,
        'collection:faceprint_no_face:ratio_rate5m{collection="default",action="identify"}': lambda v: 0 < v < 1,
        'collection:faceprint_decisions:rate5m{decision="match"}': lambda v: v > 0,
        'collection:faceprint_enrolment_rejected:ratio_rate5m{collection="default"}': lambda v: v == 1,
        'collection:faceprint_no_face:ratio_rate5m{collection="default",action="enrol"}': lambda v: v == 1,
        'collection:faceprint_no_face:ratio_rate5m{collection="default",action="verify"}': lambda v: v == 0,
        "faceprint:cpu_seconds_per_request:ratio_rate1h": lambda v: v > 0,
        "faceprint:cost_per_1k_requests:ratio_rate1h": lambda v: v > 0,
        "faceprint:embed_batch_faces:mean_5m": lambda v: v >= 1,
    }
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        for expr, ok in wanted.items():
            values = [v for _, v in _value(stack.query(expr)) if not math.isnan(v)]
            if values and ok(values[0]):
                seen[expr] = values[0]
        time.sleep(1)
    assert set(seen) == set(wanted), f"not evaluated (or wrong): {sorted(set(wanted) - set(seen))}; got {seen}"
    # Every rule loaded and evaluates without error; nothing fires on a healthy server.
    groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules if r["type"] == "alerting"} == set(alert_names())
    assert {r["name"] for r in rules if r["type"] == "recording"} == recorded_names()
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    firing = [r["name"] for r in rules if r["type"] == "alerting" and r["state"] == "firing"]
    assert firing == []


# -- dashboards -----------------------------------------------------------------------------------------------
def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            yield panel["title"], target["expr"]


def _concrete(expr: str) -> str:
    """A dashboard query as Grafana sends it: variables replaced by what they stand for."""
    return expr.replace("$__rate_interval", "5m").replace("$collection", ".*")


def _metric_names(node: Any) -> set[str]:
    """Every metric name a PromQL expression selects (walking promql-parser's tree)."""
    if isinstance(node, promql_parser.VectorSelector):
        names = {node.name} if node.name else set()
        return names | {m.value for m in node.matchers.matchers if m.name == "__name__"}
    found: set[str] = set()
    for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, str | int | float):
            found |= _metric_names(child)
    for arg in getattr(node, "args", None) or []:
        found |= _metric_names(arg)
    return found


def _exported(metrics_text: str) -> set[str]:
    """Series names a scrape of /metrics can hold: each declared family with its type's suffixes."""
    names: set[str] = set()
    suffixes = {"counter": ("", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name + s for s in suffixes.get(kind, ("",))}
            if kind == "counter" and name.endswith("_total"):
                names.add(name.removesuffix("_total") + "_created")
    return names


def test_every_dashboard_query_parses_and_names_only_real_metrics(stack: Stack) -> None:
    boards = {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("*.json"))}
    assert set(boards) == {"faceprint-executive.json", "faceprint-oncall.json", "faceprint-debug.json"}
    known = _exported(stack.metrics_text) | recorded_names() | PROMETHEUS_SERIES
    # The names the other parts of issue 17 export (drift, shadow) are declared, so a scrape lists them.
    assert {"faceprint_drift_psi", "faceprint_shadow_decisions_total", "faceprint_photos_total"} <= known
    used: set[str] = set()
    for name, board in boards.items():
        queries = list(_targets(board))
        assert len(queries) >= 8, name
        for title, expr in queries:
            concrete = _concrete(expr)
            assert "$" not in concrete, (name, title, expr)
            names = _metric_names(promql_parser.parse(concrete))
            assert names, (name, title, expr)
            unknown = names - known
            assert not unknown, f"{name} / {title}: {sorted(unknown)} not exported nor recorded"
            used |= names
            stack.query(concrete)  # and the real Prometheus runs it
    recorded = recorded_names()
    assert "faceprint:cost_per_1k_requests:ratio_rate1h" in used and "faceprint_drift_psi" in used
    assert len(used & recorded) >= 15
