"""Throughput of the Ray Serve path vs the single-process server, on the same CPUs.

    python benchmarks/ray_serve.py                        # 2 CPUs, 8 clients, 30 s per server, identify
    python benchmarks/ray_serve.py --cpus 4 --duration 60 --detector mmod

Starts ``faceprint serve`` and then ``faceprint serve --ray`` (a local Ray instance limited to ``--cpus``
through FACEPRINT_RAY_NUM_CPUS), each in a fresh FACEPRINT_HOME pinned to the same CPUs with
``taskset`` (when the machine has more), enrols the same identities, and drives each with the same
closed-loop load as benchmarks/service.py (real photos over real HTTP). Prints one row per server and the
Ray path's throughput relative to the single process: the cost (or gain) of the extra hops — HTTP proxy →
ingress replica → detector and embedder replicas, with images and chips serialised between processes.

Also measures the embedder alone on one ONNX Runtime thread (embeddings per second per CPU core), the
figure behind the capacity arithmetic in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
load = importlib.import_module("service")  # benchmarks/service.py: the same load generator and photos

CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]


@dataclass
class Row:
    name: str
    requests: int
    faces: int
    errors: int
    duration: float
    latencies_ms: np.ndarray
    load_before: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration


def ray_layout(cpus: int) -> dict[str, str]:
    """Fixed replicas sized to ``cpus``: detectors get most of them, the embedder (batched, cheap per face)
    and the HTTP ingress share the rest. Fixed, not autoscaled, so the run measures the path, not the
    autoscaler's reaction time."""
    detectors = max(1, cpus - 1)
    rest = max(0.5, cpus - detectors) / 2
    env = {
        "FACEPRINT_RAY_NUM_CPUS": str(cpus),
        "FACEPRINT_RAY_DETECTOR_MIN_REPLICAS": str(detectors),
        "FACEPRINT_RAY_DETECTOR_MAX_REPLICAS": str(detectors),
        "FACEPRINT_RAY_DETECTOR_NUM_CPUS": "1",
        "FACEPRINT_RAY_EMBEDDER_NUM_CPUS": str(rest),
        "FACEPRINT_RAY_INGRESS_NUM_CPUS": str(rest),
        "FACEPRINT_RAY_INGRESS_MAX_ONGOING_REQUESTS": "64",
    }
    return env


@contextmanager
def server(ray: bool, detector: str, cpus: int, threads: str = "default") -> Iterator[tuple[str, str]]:
    """A server in a fresh home, pinned to CPUs 0..cpus-1; yields (url, admin key)."""
    with tempfile.TemporaryDirectory(prefix="faceprint-raybench-") as home:
        env = {**os.environ, "FACEPRINT_HOME": home, "FACEPRINT_DETECTOR": detector, "RAY_USAGE_STATS_ENABLED": "0"}
        env.setdefault("FACEPRINT_KEY", secrets.token_hex(32))
        env["FACEPRINT_INFERENCE_WORKERS"] = str(cpus)
        if threads != "default":
            env["FACEPRINT_THREADS"] = threads  # ONNX Runtime intra-op threads of the single process
        if ray:
            env.update(ray_layout(cpus))
        key = subprocess.run(
            [*CLI, "keys", "create", "--scope", "admin", "--name", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        port = load.free_port()
        pin = ["taskset", "-c", f"0-{cpus - 1}"] if shutil.which("taskset") and cpus < (os.cpu_count() or 1) else []
        cmd = [*pin, *CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        log_path = Path(home) / "server.log"
        with log_path.open("w") as log:
            # Its own session: on the way out, whatever it started (Ray's processes) can be stopped with it.
            proc = subprocess.Popen(
                [*cmd, *(["--ray"] if ray else [])],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 300
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"server exited:\n{log_path.read_text()[-3000:]}")
                    try:
                        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit(f"server not ready in 300 s:\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.5)
                yield url, key
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(90)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)


def measure(name: str, url: str, key: str, args: argparse.Namespace) -> Row:
    load.enrol(url, key)
    load_before = os.getloadavg()[0]
    latencies, faces, errors, duration = asyncio.run(
        load.run_load(url, key, args.endpoint, args.clients, args.duration, args.warmup, args.threshold)
    )
    for line in errors[:3]:
        print(f"  {name} error: {line}", file=sys.stderr)
    return Row(name, len(latencies), faces, len(errors), duration, np.asarray(latencies) * 1000, load_before)


def embedder_per_core(seconds: float = 5.0) -> tuple[float, float]:
    """Embeddings per CPU-second on one ONNX Runtime thread, batches of 1 and of 32 real chips.

    Timed in process CPU time, not wall time: on a machine shared with other work a thread gets only part
    of a core, and CPU time still says what one whole core does."""
    from faceprint.embed.dlib_resnet import DlibResNetEmbedder
    from faceprint.pipeline import Pipeline

    pipeline = Pipeline(detector="hog")
    photos = [load.FACES / "identities" / p for p in load.PROBES]
    chips = np.concatenate([pipeline.chips(p, pipeline.detect(p)) for p in photos])
    model = DlibResNetEmbedder(threads=1)
    out = []
    for batch in (1, 32):
        data = np.resize(chips, (batch, *chips.shape[1:]))
        model.embed_chips(data)
        n, start = 0, time.process_time()
        while time.process_time() - start < seconds:
            model.embed_chips(data)
            n += batch
        out.append(n / (time.process_time() - start))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1), help="CPUs for each server")
    parser.add_argument("--endpoint", choices=("identify", "verify", "detect"), default="identify")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="Measured seconds per server")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--detector", default="hog")
    parser.add_argument("--threshold", type=float, default=0.92)
    parser.add_argument("--rounds", type=int, default=1, help="Alternate the servers this many times")
    parser.add_argument(
        "--single-threads",
        default="default,1",
        help="ONNX Runtime threads of the single-process server, one row each: 'default' (ORT's own choice, "
        "one per core) and/or a number (Ray replicas always use 1 per CPU they hold)",
    )
    parser.add_argument("--skip-embedder", action="store_true", help="Skip the embedder-only measurement")
    parser.add_argument("--embedder-only", action="store_true", help="Only the embedder measurement")
    args = parser.parse_args()

    host = f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"# Ray Serve vs single process — {host}; load average before {os.getloadavg()[0]:.1f}")
    print(
        f"POST /v1/{args.endpoint}, {args.clients} closed-loop clients, {args.duration:.0f} s measured after "
        f"{args.warmup:.0f} s warm-up, detector {args.detector}, {args.cpus} CPUs per server"
    )
    if args.embedder_only:
        one, batched = embedder_per_core()
        print(f"embedder alone, 1 ORT thread: {one:.1f} embeddings per CPU-second unbatched, {batched:.1f} batched")
        return
    rows = []
    # Alternated, so a change in the machine's other load hits both servers alike.
    configs = [(f"single process, ORT threads {t}", False, t) for t in args.single_threads.split(",")]
    configs.append(("Ray Serve", True, "default"))
    for _ in range(args.rounds):
        for name, ray, threads in configs:
            with server(ray, args.detector, args.cpus, threads) as (url, key):
                rows.append(measure(name, url, key, args))
    print()
    print("| path | CPUs | requests/s | faces/s | p50 ms | p95 ms | errors | load avg before |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p50, p95 = np.percentile(r.latencies_ms, [50, 95]) if r.requests else (float("nan"), float("nan"))
        print(
            f"| {r.name} | {args.cpus} | {r.rps:.2f} | {r.faces / r.duration:.2f} | {p50:.0f} | {p95:.0f} "
            f"| {r.errors} | {r.load_before:.1f} |"
        )
    ray_rps = float(np.median([r.rps for r in rows if r.name == "Ray Serve"]))
    print()
    for name, ray, _ in configs:
        single = float(np.median([r.rps for r in rows if r.name == name]))
        if not ray and single > 0:
            change = ray_rps / single - 1
            print(f"Ray Serve vs {name} (medians): {change:+.0%} ({'overhead' if change < 0 else 'gain'})")
    if not args.skip_embedder:
        one, batched = embedder_per_core()
        print(
            f"embedder alone, 1 ORT thread: {one:.1f} embeddings per CPU-second unbatched, {batched:.1f} in "
            "batches of 32"
        )
    if any(r.errors for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
