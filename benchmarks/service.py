"""Load test of the HTTP service on loopback: closed-loop clients, or open-loop arrivals for two model profiles.

    python benchmarks/service.py                          # closed loop: 16 clients, 60 s, identify, own server (HOG)
    python benchmarks/service.py --duration 20 --endpoint verify
    python benchmarks/service.py --url http://127.0.0.1:8000 --key fpk_...   # an already running server
    python benchmarks/service.py --open                   # open loop, dlib and ArcFace-pack profiles (see below)
    python benchmarks/service.py --open --duration 10 --profiles dlib-resnet-v1   # a smoke run, one profile

**Closed loop** (the default): each client sends, waits for the answer, sends again, over a real HTTP
connection (httpx), cycling through real photos from ../shared/data/faces. Reports throughput, latency
p50/p95/p99/max, errors (any non-2xx answer other than 503 or a transport error), 503 ``overloaded``
answers separately (a client that gets one waits its ``Retry-After``, as a well-behaved client does), and
the server's mean embedder batch size read from /metrics.

**Open loop** (``--open``): for each model profile (``--profiles``, default ``dlib-resnet-v1`` and the
ArcFace pack ``faceplugin-mbf``), start ``faceprint serve`` with ``FACEPRINT_MODEL=<id>`` in a fresh
``FACEPRINT_HOME`` and a model store ``FACEPRINT_MODEL_DIR`` into which ``faceprint models install
faceplugin`` (an npm pack) has been run once for the whole run; enrol the same identities; measure the
saturation rate closed-loop (as many clients as the server admits: workers + queue, from /v1/info); then
send identify requests at 25, 50, 75 and 100 % of that rate and at an overload rate (``--overload``, 200 %),
as Poisson arrivals (or ``--arrivals uniform``) bounded in time (``--duration`` per step) and count
(``--max-requests``), each request timing out after ``--timeout`` s. Latency is measured from the moment a
request was due (so a lagging client cannot hide queueing); the client's own lag is reported. Prints a
markdown table and checks the targets (met / NOT MET): the ArcFace-pack profile reaches 4x the identify
req/s of the dlib profile on the same photos; p95 <= 500 ms at 50 % of saturation; no error of any kind
below saturation; overload answered with 503 within 100 ms (p99), never another 5xx or a timeout.

Only loopback servers are load-tested. With no ``--url`` the servers are started here and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

FACES = Path(os.environ.get("FACEPRINT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "faces"
# Small photos (under 1 MP): the load test measures the service, not the detector on 12 MP images.
PROBES = [
    "person01/img43.jpg",
    "person01/img44.jpg",
    "person02/img50.jpg",
    "person04/img62.jpg",
    "person06/img29.jpg",
    "person01/img46.jpg",
]
ENROL = {"person01": ["img27.jpg", "img28.jpg"], "person02": ["img51.jpg"], "person04": ["img61.jpg"]}
PROFILES = ("dlib-resnet-v1", "faceplugin-mbf")
PACKS = {"faceplugin-mbf": "faceplugin"}  # profile → the pack `faceprint models install` needs for it
STEPS = (0.25, 0.50, 0.75, 1.00)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]

# Targets (issue 12, part 5).
TARGET_SPEEDUP = 4.0  # ArcFace-pack identify req/s over the dlib profile's
TARGET_P95_AT_HALF_MS = 500.0
TARGET_503_MS = 100.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_server(env_extra: dict[str, str]) -> Iterator[tuple[str, str]]:
    """`faceprint serve` on 127.0.0.1 in a fresh temporary FACEPRINT_HOME; yields (url, admin key)."""
    with tempfile.TemporaryDirectory(prefix="faceprint-bench-") as home:
        env = {**os.environ, "FACEPRINT_HOME": home, **env_extra}
        env.setdefault("FACEPRINT_KEY", secrets.token_hex(32))
        key = subprocess.run(
            [*CLI, "keys", "create", "--scope", "admin", "--name", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        port = free_port()
        log_path = Path(home) / "server.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 300
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"server exited:\n{log_path.read_text()}")
                    try:
                        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit(f"server not ready in 300 s:\n{log_path.read_text()}")
                    time.sleep(0.3)
                yield url, key
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def install_packs(profiles: list[str], store: Path) -> None:
    """`faceprint models install PACK` into ``store`` for the profiles that need a pack (npm, once a run)."""
    for pack in sorted({PACKS[p] for p in profiles if p in PACKS}):
        print(f"installing the {pack} pack into {store} …", file=sys.stderr)
        done = subprocess.run(
            [*CLI, "models", "install", pack],
            env={**os.environ, "FACEPRINT_MODEL_DIR": str(store)},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"`faceprint models install {pack}` failed:\n{done.stdout}{done.stderr}")


def enrol(url: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        for person, names in ENROL.items():
            subject = client.post("/v1/subjects", json={"name": person})
            if subject.status_code == 409:
                continue
            subject.raise_for_status()
            files = [("image", (n, (FACES / "identities" / person / n).read_bytes(), "image/jpeg")) for n in names]
            client.post(f"/v1/subjects/{subject.json()['id']}/faces", files=files).raise_for_status()


def request_for(
    endpoint: str, photos: list[tuple[str, bytes]], i: int, threshold: float | None
) -> tuple[str, dict, dict]:
    name, data = photos[i % len(photos)]
    params = {} if threshold is None else {"threshold": str(threshold)}
    if endpoint == "verify":
        other_name, other = photos[(i + 1) % len(photos)]
        files = {"image_a": (name, data, "image/jpeg"), "image_b": (other_name, other, "image/jpeg")}
        return "/v1/verify", files, params
    return f"/v1/{endpoint}", {"image": (name, data, "image/jpeg")}, params if endpoint == "identify" else {}


# Larger photos of the same identities (1.4–12.6 MP): one-pass detection (the pack's UltraFace) costs the same
# at any size, the cascade grows with the photo, so the profiles' ratio depends on the photos (--photos).
LARGE_PROBES = [
    "person01/img26.jpg",
    "person02/img47.jpg",
    "person02/img49.jpg",
    "person03/img54.jpg",
    "person04/img59.jpg",
    "person05/img57.jpg",
]
PHOTO_SETS = {"small": (PROBES, "0.2–0.7 MP"), "large": (LARGE_PROBES, "1.4–12.6 MP")}
PHOTO_SET = "small"  # set from --photos in main()


def photos_label() -> str:
    names, size = PHOTO_SETS[PHOTO_SET]
    return f"{len(names)} real photos ({size})"


def load_photos() -> list[tuple[str, bytes]]:
    return [(p, (FACES / "identities" / p).read_bytes()) for p in PHOTO_SETS[PHOTO_SET][0]]


def multipart_bodies(photos: list[tuple[str, bytes]], threshold: float | None) -> list[tuple[bytes, str]]:
    """Identify request bodies encoded once, so the open-loop client spends its CPU on sending, not encoding
    (it shares the machine with the server)."""
    out = []
    for name, data in photos:
        request = httpx.Request(
            "POST",
            "http://127.0.0.1/v1/identify",
            files={"image": (name, data, "image/jpeg")},
            data={} if threshold is None else {"threshold": str(threshold)},
        )
        out.append((request.read(), request.headers["content-type"]))
    return out


def retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


# -- closed loop ---------------------------------------------------------------------------------------------
@dataclass
class ClosedResult:
    latencies: list[float] = field(default_factory=list)  # seconds, answers inside the measured window
    faces: int = 0
    errors: list[str] = field(default_factory=list)
    rejected: int = 0  # 503 overloaded
    duration: float = 0.0


async def run_load(
    url: str,
    key: str,
    endpoint: str,
    clients: int,
    duration: float,
    warmup: float,
    threshold: float | None,
    photos: list[tuple[str, bytes]] | None = None,
) -> ClosedResult:
    photos = photos or load_photos()
    result = ClosedResult(duration=duration)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300, limits=limits
    ) as client:
        start = time.monotonic()
        measure_from = start + warmup
        stop = measure_from + duration

        async def worker(index: int) -> None:
            i = index
            while time.monotonic() < stop:
                path, files, data = request_for(endpoint, photos, i, threshold)
                i += clients
                sent = time.monotonic()
                try:
                    response = await client.post(path, files=files, data=data)
                except httpx.HTTPError as exc:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                done = time.monotonic()
                if response.status_code == 503 and _code(response) == "overloaded":
                    result.rejected += 1
                    await asyncio.sleep(min(retry_after(response), max(0.0, stop - time.monotonic())))
                    continue
                if response.status_code >= 300:
                    result.errors.append(f"{response.status_code}: {response.text[:200]}")  # errors count at any time
                    continue
                if not measure_from <= done <= stop:
                    continue  # throughput and latency: answers that arrived inside the measured window
                result.latencies.append(done - sent)
                result.faces += len(response.json().get("faces", [1]))

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return result


def _code(response: httpx.Response) -> str | None:
    try:
        return response.json().get("code")
    except ValueError:
        return None


# -- open loop -----------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    label: str
    offered: float  # req/s asked for
    sent: int = 0
    ok_latencies: list[float] = field(default_factory=list)  # seconds from due time to answer
    rejected_latencies: list[float] = field(default_factory=list)  # 503 overloaded: from send to answer
    statuses: Counter = field(default_factory=Counter)  # every non-2xx status (503 included)
    transport_errors: Counter = field(default_factory=Counter)  # timeouts and other client-side failures
    lags: list[float] = field(default_factory=list)  # how late the client sent each request
    elapsed: float = 0.0
    batch_mean: float = 0.0

    @property
    def achieved(self) -> float:
        return len(self.ok_latencies) / self.elapsed if self.elapsed else 0.0

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) + sum(self.transport_errors.values())

    @property
    def other_5xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 and status != 503)

    @property
    def timeouts(self) -> int:
        return sum(n for kind, n in self.transport_errors.items() if "Timeout" in kind)


def arrival_times(rate: float, duration: float, max_requests: int, kind: str, seed: int) -> list[float]:
    """Offsets (s) of the requests of one step: Poisson (exponential gaps) or evenly spaced, within the
    duration and at most ``max_requests``."""
    if rate <= 0:
        return []
    if kind == "uniform":
        count = min(max_requests, int(rate * duration))
        return [i / rate for i in range(count)]
    rng = random.Random(seed)
    times: list[float] = []
    t = rng.expovariate(rate)
    while t < duration and len(times) < max_requests:
        times.append(t)
        t += rng.expovariate(rate)
    return times


async def open_loop_step(
    url: str,
    key: str,
    label: str,
    rate: float,
    args: argparse.Namespace,
    photos: list[tuple[str, bytes]],
    seed: int,
) -> StepResult:
    step = StepResult(label, rate)
    bodies = multipart_bodies(photos, args.threshold)
    offsets = arrival_times(rate, args.duration, args.max_requests, args.arrivals, seed)
    limits = httpx.Limits(max_connections=args.max_connections, max_keepalive_connections=args.max_connections)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=args.timeout, limits=limits
    ) as client:

        async def one(i: int, due: float) -> None:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body, content_type = bodies[i % len(bodies)]
            sent = time.monotonic()
            step.lags.append(sent - due)
            step.sent += 1
            try:
                response = await client.post("/v1/identify", content=body, headers={"content-type": content_type})
            except httpx.HTTPError as exc:
                step.transport_errors[type(exc).__name__] += 1
                return
            done = time.monotonic()
            if response.status_code < 300:
                step.ok_latencies.append(done - due)
                return
            step.statuses[response.status_code] += 1
            if response.status_code == 503 and _code(response) == "overloaded":
                step.rejected_latencies.append(done - sent)

        start = time.monotonic() + 0.05
        tasks = [asyncio.create_task(one(i, start + offset)) for i, offset in enumerate(offsets)]
        await asyncio.gather(*tasks)
        step.elapsed = max(args.duration, time.monotonic() - start) if offsets else args.duration
    return step


def batch_stats(url: str, key: str) -> tuple[float, float]:
    """(sum, count) of the server's embedder batch-size histogram."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    total = re.search(r"^faceprint_embed_batch_faces_sum (\S+)$", text, re.M)
    count = re.search(r"^faceprint_embed_batch_faces_count (\S+)$", text, re.M)
    if not total or not count:
        return 0.0, 0.0
    return float(total.group(1)), float(count.group(1))


def batch_mean_between(before: tuple[float, float], after: tuple[float, float]) -> float:
    faces, runs = after[0] - before[0], after[1] - before[1]
    return faces / runs if runs else 0.0


def admission_capacity(url: str) -> int | None:
    """workers + max_queue from /v1/info (None for a server that does not report them)."""
    limits = httpx.get(f"{url}/v1/info", timeout=30).json().get("limits", {})
    if "inference_workers" in limits and "max_queue" in limits:
        return int(limits["inference_workers"]) + int(limits["max_queue"])
    return None


@dataclass
class ProfileResult:
    profile: str
    served: str | None = None  # the model the server reports
    detector: str | None = None
    saturation: float = 0.0
    saturation_clients: int = 0
    saturation_batch: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    problem: str | None = None


def run_profile(url: str, key: str, profile: str, args: argparse.Namespace) -> ProfileResult:
    result = ProfileResult(profile)
    info = httpx.get(f"{url}/v1/info", timeout=30).json()
    result.served, result.detector = info.get("model_id"), info.get("detector")
    if profile != "(running server)" and result.served != profile:
        result.problem = (
            f"the server serves {result.served}, not {profile}: it ignores FACEPRINT_MODEL (needs the service's "
            "`model` setting)"
        )
        return result
    enrol(url, key)
    photos = load_photos()
    clients = args.saturation_clients or admission_capacity(url) or 8
    result.saturation_clients = clients
    before = batch_stats(url, key)
    closed = asyncio.run(run_load(url, key, "identify", clients, args.duration, args.warmup, args.threshold, photos))
    result.saturation_batch = batch_mean_between(before, batch_stats(url, key))
    result.saturation = len(closed.latencies) / closed.duration
    if closed.errors or not closed.latencies:
        result.problem = f"saturation run failed: {len(closed.errors)} errors, e.g. {closed.errors[:1]}"
        return result
    fractions = [*STEPS, args.overload]
    for n, fraction in enumerate(fractions):
        label = f"{fraction:.0%}" + (" (overload)" if fraction > 1 else "")
        time.sleep(args.pause)  # let the previous step's queue drain
        before = batch_stats(url, key)
        step = asyncio.run(open_loop_step(url, key, label, fraction * result.saturation, args, photos, seed=n))
        step.batch_mean = batch_mean_between(before, batch_stats(url, key))
        result.steps.append(step)
    return result


# -- report --------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else math.nan


def fmt(ms: float) -> str:
    return "–" if math.isnan(ms) else f"{ms:.0f}"


def print_table(results: list[ProfileResult], args: argparse.Namespace) -> None:
    print(
        "| profile | step | offered req/s | achieved req/s | p50 ms | p95 ms | p99 ms | ok | 503 | 503 p99 ms "
        "| other errors | client lag p95 ms | embed batch mean |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in results:
        name = f"{r.profile} ({r.detector})" if r.detector else r.profile
        if r.problem:
            print(f"| {name} | – | | | | | | | | | {r.problem} | | |")
            continue
        print(
            f"| {name} | saturation, closed loop ({r.saturation_clients} clients) | – | {r.saturation:.1f} "
            f"| | | | | | | | | {r.saturation_batch:.2f} |"
        )
        for s in r.steps:
            other = {str(k): v for k, v in sorted(s.statuses.items()) if k != 503} | dict(s.transport_errors)
            others = ", ".join(f"{k}: {v}" for k, v in other.items()) or "0"
            print(
                f"| {name} | {s.label} | {s.offered:.1f} | {s.achieved:.1f} | {fmt(pct(s.ok_latencies, 50))} "
                f"| {fmt(pct(s.ok_latencies, 95))} | {fmt(pct(s.ok_latencies, 99))} | {len(s.ok_latencies)} "
                f"| {s.statuses.get(503, 0)} | {fmt(pct(s.rejected_latencies, 99))} | {others} "
                f"| {fmt(pct(s.lags, 95))} | {s.batch_mean:.2f} |"
            )


def check_targets(results: list[ProfileResult]) -> list[tuple[str, bool | None, str]]:
    """(target, met: True/False/None = not checked, what was measured)."""
    checks: list[tuple[str, bool | None, str]] = []
    by_profile = {r.profile: r for r in results if not r.problem}
    dlib, pack = by_profile.get("dlib-resnet-v1"), by_profile.get("faceplugin-mbf")
    if dlib and pack and dlib.saturation > 0:
        ratio = pack.saturation / dlib.saturation
        checks.append(
            (
                f"ArcFace pack >= {TARGET_SPEEDUP:.0f}x the dlib profile's identify req/s (same photos)",
                ratio >= TARGET_SPEEDUP,
                f"{pack.saturation:.1f} / {dlib.saturation:.1f} req/s = {ratio:.2f}x",
            )
        )
    else:
        checks.append((f"ArcFace pack >= {TARGET_SPEEDUP:.0f}x the dlib profile", None, "needs both profiles"))
    for r in results:
        if r.problem:
            checks.append((f"{r.profile}: all targets", None, r.problem))
            continue
        half = next(s for s in r.steps if s.label == "50%")
        p95 = pct(half.ok_latencies, 95)
        checks.append(
            (
                f"{r.profile}: p95 <= {TARGET_P95_AT_HALF_MS:.0f} ms at 50 % of saturation",
                bool(p95 <= TARGET_P95_AT_HALF_MS),
                f"{p95:.0f} ms",
            )
        )
        below = [s for s in r.steps if s.offered < r.saturation * 0.999]
        errors = sum(s.errors for s in below)
        checks.append(
            (
                f"{r.profile}: 0 errors below saturation (25/50/75 %)",
                errors == 0,
                f"{errors} errors" + (f" ({', '.join(_breakdown(s) for s in below if s.errors)})" if errors else ""),
            )
        )
        rejected = [lat for s in r.steps for lat in s.rejected_latencies]
        other_5xx = sum(s.other_5xx for s in r.steps)
        timeouts = sum(s.timeouts for s in r.steps)
        p99 = pct(rejected, 99)
        if not rejected:
            checks.append((f"{r.profile}: overload answered with 503 within {TARGET_503_MS:.0f} ms", False, "no 503"))
        else:
            checks.append(
                (
                    f"{r.profile}: overload answered with 503 within {TARGET_503_MS:.0f} ms (p99)",
                    bool(p99 <= TARGET_503_MS),
                    f"{len(rejected)} x 503: p50 {pct(rejected, 50):.0f} ms, p99 {p99:.0f} ms, "
                    f"max {max(rejected) * 1000:.0f} ms",
                )
            )
        checks.append(
            (
                f"{r.profile}: never another 5xx or a timeout, at any step",
                other_5xx == 0 and timeouts == 0,
                f"{other_5xx} other 5xx, {timeouts} timeouts",
            )
        )
    return checks


def _breakdown(step: StepResult) -> str:
    parts = [f"{k}: {v}" for k, v in sorted(step.statuses.items())] + [
        f"{k}: {v}" for k, v in step.transport_errors.items()
    ]
    return f"{step.label}: " + ", ".join(parts)


def header() -> str:
    host = f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    return f"# faceprint service load test — {host}, 1-min load average before the run {os.getloadavg()[0]:.1f}"


def run_open(args: argparse.Namespace) -> int:
    print(header())
    print(
        f"open loop: POST /v1/identify, {args.arrivals} arrivals, {args.duration:.0f} s per step (at most "
        f"{args.max_requests} requests), {args.timeout:.0f} s timeout, {photos_label()}; "
        f"saturation measured closed-loop for {args.duration:.0f} s after {args.warmup:.0f} s warm-up"
    )
    results: list[ProfileResult] = []
    if args.url:
        results.append(run_profile(args.url, args.key, "(running server)", args))
    else:
        with ExitStack() as stack:
            store = (
                Path(args.model_store)
                if args.model_store
                else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faceprint-models-")))
            )
            install_packs(args.profiles, store)
            for profile in args.profiles:
                env = {"FACEPRINT_MODEL": profile, "FACEPRINT_MODEL_DIR": str(store)}
                if args.detector:
                    env["FACEPRINT_DETECTOR"] = args.detector
                print(f"profile {profile}: starting the server …", file=sys.stderr)
                with own_server(env) as (url, key):
                    results.append(run_profile(url, key, profile, args))
    print()
    print_table(results, args)
    print()
    checks = check_targets(results)
    for target, met, measured in checks:
        verdict = "met" if met else ("NOT CHECKED" if met is None else "NOT MET")
        print(f"- **{verdict}**: {target} — {measured}")
    return 1 if args.strict and any(met is not True for _, met, _ in checks) else 0


def run_closed(args: argparse.Namespace) -> int:
    def run(url: str, key: str) -> int:
        enrol(url, key)
        before = batch_stats(url, key)
        load_before = os.getloadavg()[0]  # other work on the machine skews every figure: say how much
        result = asyncio.run(
            run_load(url, key, args.endpoint, args.clients, args.duration, args.warmup, args.threshold)
        )
        mean_batch = batch_mean_between(before, batch_stats(url, key))
        lat = np.asarray(result.latencies) * 1000
        host = f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        print(f"# faceprint service load test — {host}, 1-min load average before the run {load_before:.1f}")
        print(
            f"endpoint      POST /v1/{args.endpoint}, {args.clients} concurrent clients, {result.duration:.0f} s "
            f"measured after {args.warmup:.0f} s warm-up, {photos_label()}"
        )
        print(
            f"requests      {len(lat)} ok, {len(result.errors)} errors, {result.rejected} answered 503 overloaded "
            "(the client waited Retry-After)"
        )
        if len(lat):
            print(f"throughput    {len(lat) / result.duration:.2f} req/s, {result.faces / result.duration:.2f} faces/s")
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            print(
                f"latency ms    p50 {p50:.0f}  p95 {p95:.0f}  p99 {p99:.0f}  max {lat.max():.0f}  mean {lat.mean():.0f}"
            )
        print(f"embed batches mean {mean_batch:.2f} faces per network run (server-side micro-batching)")
        for line in result.errors[:5]:
            print(f"error         {line}")
        return 1 if result.errors else 0

    if args.url:
        return run(args.url.rstrip("/"), args.key)
    with own_server({"FACEPRINT_DETECTOR": args.detector or "hog"}) as (url, key):
        return run(url, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="A running server on loopback (default: start one per profile)")
    parser.add_argument("--key", default=os.environ.get("FACEPRINT_API_KEY"), help="API key for --url")
    parser.add_argument("--open", action="store_true", help="Open loop at fixed rates, per model profile")
    parser.add_argument("--endpoint", choices=("identify", "verify", "detect"), default="identify", help="Closed loop")
    parser.add_argument("--clients", type=int, default=16, help="Closed loop: concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="Measured seconds (open loop: per step)")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds of load before measuring")
    parser.add_argument(
        "--detector",
        default=os.environ.get("FACEPRINT_DETECTOR"),
        help="For the own server (closed loop default: hog; open loop default: each profile's own)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="Cosine threshold sent with each request (closed loop default 0.92; open loop: the calibrated default)",
    )
    parser.add_argument(
        "--profiles",
        type=lambda text: [p for p in text.split(",") if p],
        default=list(PROFILES),
        help="Open loop: comma-separated model ids, one server each (default: %(default)s)",
    )
    parser.add_argument("--model-store", help="Open loop: model store to install packs into (default: a temporary one)")
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson", help="Open loop arrivals")
    parser.add_argument("--overload", type=float, default=2.0, help="Open loop: overload step, fraction of saturation")
    parser.add_argument("--max-requests", type=int, default=20_000, help="Open loop: at most this many per step")
    parser.add_argument("--timeout", type=float, default=30.0, help="Open loop: seconds before a request times out")
    parser.add_argument("--max-connections", type=int, default=256, help="Open loop: client connection pool")
    parser.add_argument("--pause", type=float, default=2.0, help="Open loop: seconds between steps")
    parser.add_argument("--saturation-clients", type=int, help="Open loop: closed-loop clients (default: capacity)")
    parser.add_argument(
        "--photos", choices=sorted(PHOTO_SETS), default="small", help="Probe photos: small (0.2–0.7 MP) or large"
    )
    parser.add_argument("--strict", action="store_true", help="Open loop: exit 1 unless every target is met")
    args = parser.parse_args()
    global PHOTO_SET
    PHOTO_SET = args.photos
    if args.url:
        args.url = args.url.rstrip("/")
        if not args.key:
            parser.error("--url needs --key (or FACEPRINT_API_KEY)")
        if urlparse(args.url).hostname not in LOOPBACK:
            parser.error("only a server on loopback (127.0.0.1) is load-tested")
    if not args.open and args.threshold is None:
        args.threshold = 0.92
    unknown = [p for p in args.profiles if not re.fullmatch(r"[A-Za-z0-9._-]+", p)]
    if unknown:
        parser.error(f"not a model id: {unknown}")
    raise SystemExit(run_open(args) if args.open else run_closed(args))


if __name__ == "__main__":
    main()
