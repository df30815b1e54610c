"""Load test of the HTTP service: N concurrent clients against a running server on loopback.

    python benchmarks/service.py                          # starts its own server: 16 clients, 60 s, identify
    python benchmarks/service.py --duration 20 --endpoint verify
    python benchmarks/service.py --url http://127.0.0.1:8000 --key fpk_...   # an already running server

Each client is a closed loop (send, wait for the answer, send again) over a real HTTP connection (httpx),
cycling through real photos from ../shared/data/faces. Reports throughput, latency p50/p95/p99/max, the
error count (any non-2xx answer or transport error), and the server's mean embedder batch size read from
/metrics (how much micro-batching happened). With no --url it starts `faceprint serve` in a temporary
FACEPRINT_HOME, creates a key, and enrols the test identities first (not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_server(detector: str) -> Iterator[tuple[str, str]]:
    """`faceprint serve` in a temporary home; yields (url, admin key)."""
    with tempfile.TemporaryDirectory(prefix="faceprint-bench-") as home:
        env = {**os.environ, "FACEPRINT_HOME": home, "FACEPRINT_DETECTOR": detector}
        env.setdefault("FACEPRINT_KEY", secrets.token_hex(32))
        cli = [sys.executable, "-c", "from faceprint.cli import app; app()"]
        key = subprocess.run(
            [*cli, "keys", "create", "--scope", "admin", "--name", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        port = free_port()
        log_path = Path(home) / "server.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 180
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"server exited:\n{log_path.read_text()}")
                    try:
                        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit(f"server not ready in 180 s:\n{log_path.read_text()}")
                    time.sleep(0.3)
                yield url, key
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


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


def request_for(endpoint: str, photos: list[tuple[str, bytes]], i: int, threshold: float) -> tuple[str, dict, dict]:
    name, data = photos[i % len(photos)]
    if endpoint == "verify":
        other_name, other = photos[(i + 1) % len(photos)]
        files = {"image_a": (name, data, "image/jpeg"), "image_b": (other_name, other, "image/jpeg")}
        return "/v1/verify", files, {"threshold": str(threshold)}
    params = {"threshold": str(threshold)} if endpoint == "identify" else {}
    return f"/v1/{endpoint}", {"image": (name, data, "image/jpeg")}, params


async def run_load(
    url: str, key: str, endpoint: str, clients: int, duration: float, warmup: float, threshold: float
) -> tuple[list[float], int, list[str], float]:
    photos = [(p, (FACES / "identities" / p).read_bytes()) for p in PROBES]
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300, limits=limits
    ) as client:
        start = time.monotonic()
        measure_from = start + warmup
        stop = measure_from + duration
        faces = 0

        async def worker(index: int) -> None:
            nonlocal faces
            i = index
            while time.monotonic() < stop:
                path, files, data = request_for(endpoint, photos, i, threshold)
                i += clients
                sent = time.monotonic()
                try:
                    response = await client.post(path, files=files, data=data)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                done = time.monotonic()
                if response.status_code >= 300:
                    errors.append(f"{response.status_code}: {response.text[:200]}")  # errors count at any time
                    continue
                if not measure_from <= done <= stop:
                    continue  # throughput and latency: answers that arrived inside the measured window
                latencies.append(done - sent)
                faces += len(response.json().get("faces", [1]))

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return latencies, faces, errors, duration


def batch_stats(url: str, key: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    total = re.search(r"^faceprint_embed_batch_faces_sum (\S+)$", text, re.M)
    count = re.search(r"^faceprint_embed_batch_faces_count (\S+)$", text, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return 0.0, 0.0
    return float(total.group(1)) / float(count.group(1)), float(count.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="A running server (default: start one)")
    parser.add_argument("--key", default=os.environ.get("FACEPRINT_API_KEY"), help="API key for --url")
    parser.add_argument("--endpoint", choices=("identify", "verify", "detect"), default="identify")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="Measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds of load before measuring")
    parser.add_argument("--detector", default=os.environ.get("FACEPRINT_DETECTOR", "hog"), help="For the own server")
    parser.add_argument("--threshold", type=float, default=0.92, help="Cosine threshold sent with each request")
    args = parser.parse_args()
    if args.url and not args.key:
        parser.error("--url needs --key (or FACEPRINT_API_KEY)")

    def run(url: str, key: str) -> None:
        enrol(url, key)
        before_mean, before_count = batch_stats(url, key)
        load_before = os.getloadavg()[0]  # other work on the machine skews every figure: say how much
        latencies, faces, errors, duration = asyncio.run(
            run_load(url, key, args.endpoint, args.clients, args.duration, args.warmup, args.threshold)
        )
        mean_batch, batches = batch_stats(url, key)
        if batches > before_count:
            mean_batch = (mean_batch * batches - before_mean * before_count) / (batches - before_count)
        lat = np.asarray(latencies) * 1000
        host = f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        print(f"# faceprint service load test — {host}, 1-min load average before the run {load_before:.1f}")
        print(
            f"endpoint      POST /v1/{args.endpoint}, {args.clients} concurrent clients, {duration:.0f} s measured "
            f"after {args.warmup:.0f} s warm-up, {len(PROBES)} real photos (0.2–0.7 MP)"
        )
        print(f"requests      {len(lat)} ok, {len(errors)} errors")
        if len(lat):
            print(f"throughput    {len(lat) / duration:.2f} req/s, {faces / duration:.2f} faces/s")
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            print(
                f"latency ms    p50 {p50:.0f}  p95 {p95:.0f}  p99 {p99:.0f}  max {lat.max():.0f}  mean {lat.mean():.0f}"
            )
        print(f"embed batches mean {mean_batch:.2f} faces per network run (server-side micro-batching)")
        for line in errors[:5]:
            print(f"error         {line}")
        if errors:
            raise SystemExit(1)

    if args.url:
        run(args.url.rstrip("/"), args.key)
    else:
        with own_server(args.detector) as (url, key):
            run(url, key)


if __name__ == "__main__":
    main()
