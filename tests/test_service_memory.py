"""Memory per request (issue #13, item 3): a request's images are bounded by their pixels together, large
photos are decoded reduced (detections still in the photo's own pixels), and freed memory goes back to the OS.

The service runs in a subprocess (the default cascade profile, as ``faceprint serve`` runs it, driven through
``fastapi.testclient``) so its peak RSS (``VmHWM``, reset between requests through ``/proc/self/clear_refs``)
is its own. The 40 MP photo is a real one upscaled.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from faceprint.image import load_image
from faceprint.service.memory import MemoryReleaser
from tests.conftest import IDENTITIES

LARGE_PHOTO = IDENTITIES / "person02" / "img49.jpg"  # 4352×2903, one face ~1,000 px wide
MiB = 1024 * 1024
# Peak RSS a 40 MP JPEG may add to the service: decoded at 10 MP (30 MB of RGB) plus the body, the parsed
# form, a 2 MP detection pyramid and the chips. Before: the full 40 MP decode, converted and copied (~850 MB).
PEAK_BUDGET_40MP = 300 * MiB

needs_proc = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")

SERVER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from fastapi.testclient import TestClient
    from faceprint.pipeline import Pipeline
    from faceprint.service.app import create_app
    from faceprint.service.settings import Settings

    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def reset_peak():
        Path("/proc/self/clear_refs").write_text("5")

    home = Path(sys.argv[1])
    settings = Settings(
        home=home, gallery=home / "gallery", service_db=home / "service.sqlite3", auth=False,
        max_upload_bytes=64 * 1024 * 1024, max_pixels=40_000_000, max_images_per_request=20,
    )
    app = create_app(settings, pipeline=Pipeline())
    out = {}
    with TestClient(app, raise_server_exceptions=False) as client:
        small = (home / "small.jpg").read_bytes()
        for _ in range(2):  # warm up: every model has run once
            client.post("/v1/detect", files={"image": ("small.jpg", small, "image/jpeg")})
        subject = client.post("/v1/subjects", json={"name": "Many"}).json()["id"]
        for name in sys.argv[2:]:
            kind, _, path = name.partition(":")
            data = (home / path).read_bytes()
            time.sleep(1.5)
            before = status("VmRSS")
            reset_peak()
            start = time.perf_counter()
            if kind == "detect":
                r = client.post("/v1/detect", files={"image": (path, data, "image/jpeg")})
            else:  # enrol 20 copies
                parts = [("image", (f"{i}.png", data, "image/png")) for i in range(20)]
                r = client.post(f"/v1/subjects/{subject}/faces", files=parts)
            elapsed = time.perf_counter() - start
            peak = status("VmHWM")
            time.sleep(3.0)  # trims run 0.5 s and 2.5 s after a large decode
            out[name] = {
                "status": r.status_code, "body": r.json(), "seconds": elapsed,
                "before": before, "peak": peak, "after": status("VmRSS"),
            }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, dict]:
    """Runs the service in a subprocess: a 40 MP JPEG to /v1/detect, then 20 tiny 40 MP 1-bit PNGs in one
    enrolment; for each, the answer, its time, RSS before, peak RSS during and RSS after (bytes)."""
    home = tmp_path_factory.mktemp("memory-home")
    with PILImage.open(LARGE_PHOTO) as photo:
        photo.save(home / "small.jpg", quality=90)  # warm-up: the same photo at its own 12.6 MP
        big = photo.convert("RGB").resize((7744, 5164), PILImage.Resampling.BILINEAR)  # 39.99 MP
    big.save(home / "big.jpg", quality=85)
    del big
    PILImage.new("1", (8000, 5000), 1).save(home / "bilevel.png", optimize=True)  # 40 MP in a few kB
    env = {**os.environ, "FACEPRINT_KEY": "ab" * 32, "FACEPRINT_CACHE_DIR": str(cache_dir)}
    for var in ("FACEPRINT_MAX_REQUEST_PIXELS", "FACEPRINT_DECODE_MAX_PIXELS", "MALLOC_ARENA_MAX"):
        env.pop(var, None)
    done = subprocess.run(
        [sys.executable, "-c", SERVER, str(home), "detect:big.jpg", "enrol:bilevel.png"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_proc
def test_40mp_photo_peak_rss_is_bounded_and_returned(served: dict[str, dict]) -> None:
    run = served["detect:big.jpg"]
    assert run["status"] == 200, run["body"]
    body = run["body"]
    assert (body["width"], body["height"]) == (7744, 5164)  # the photo's own size, not the decoded one
    (face,) = body["faces"]
    x1, y1, x2, y2 = face["box"]
    # The face of the 12.6 MP original, scaled by 7744 / 4352: boxes are in the pixels of the photo sent.
    assert 1200 < x2 - x1 < 2600 and 0 <= x1 < x2 <= 7744 and 0 <= y1 < y2 <= 5164
    added = run["peak"] - run["before"]
    assert added < PEAK_BUDGET_40MP, f"peak RSS rose by {added / MiB:.0f} MiB"
    # Freed memory went back to the OS (malloc_trim): what stays is well under the 30 MB decoded photo.
    kept = run["after"] - run["before"]
    assert kept < 40 * MiB, f"RSS stayed {kept / MiB:.0f} MiB higher"


@needs_proc
def test_request_over_the_pixel_budget_is_refused_before_decoding(served: dict[str, dict]) -> None:
    run = served["enrol:bilevel.png"]
    assert run["status"] == 413, run["body"]
    body = run["body"]
    assert body["code"] == "too_many_pixels"
    assert body["total_pixels"] == 20 * 40_000_000 and body["limit"] == 100_000_000
    assert "800,000,000" in body["detail"] and "100,000,000" in body["detail"]
    assert "FACEPRINT_MAX_REQUEST_PIXELS" in body["detail"]
    assert run["seconds"] < 2.0  # before: 45 s and 4.65 GB
    assert run["peak"] - run["before"] < 50 * MiB


def test_reduced_decode_keeps_boxes_in_the_photos_frame(pipeline) -> None:
    full = load_image(LARGE_PHOTO)
    reduced = load_image(LARGE_PHOTO, decode_max_pixels=10_000_000)  # 12.6 MP → 1/2 by libjpeg (DCT)
    assert reduced.scale == 2 and reduced.pixels.shape == (1452, 2176, 3)
    assert (reduced.width, reduced.height) == (full.width, full.height) == (4352, 2903)
    (a,) = pipeline.detect(full)
    (b,) = pipeline.detect(reduced)
    width = a.width
    assert np.abs(np.subtract(a.box, b.box)).max() < 0.03 * width
    assert np.abs(a.landmarks - b.landmarks).max() < 0.02 * width
    (fa,) = pipeline.embed(full, [a])
    (fb,) = pipeline.embed(reduced, [b])
    cosine = float(fa.vector @ fb.vector / np.linalg.norm(fa.vector) / np.linalg.norm(fb.vector))
    assert cosine >= 0.98


def test_reduced_decode_of_other_formats_and_exif_rotation() -> None:
    with PILImage.open(LARGE_PHOTO) as photo:
        photo = photo.convert("RGB").reduce(4)  # 1088×726
    rotated = io.BytesIO()
    exif = PILImage.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    photo.save(rotated, format="JPEG", exif=exif)
    full = load_image(rotated.getvalue())
    small = load_image(rotated.getvalue(), decode_max_pixels=300_000)
    assert (full.width, full.height) == (small.width, small.height) == (726, 1088)
    assert small.scale == 2 and small.pixels.shape == (544, 363, 3)
    coarse = full.pixels[::2, ::2].astype(np.int16)[: small.pixels.shape[0], : small.pixels.shape[1]]
    assert np.abs(coarse - small.pixels).mean() < 12  # same orientation, same content
    png = io.BytesIO()
    photo.save(png, format="PNG")
    reduced = load_image(png.getvalue(), decode_max_pixels=100_000)  # 790k pixels → reduce(3)
    assert reduced.scale == 3 and reduced.pixels.shape == (242, 363, 3)
    assert (reduced.width, reduced.height) == (1088, 726)
    bilevel = io.BytesIO()
    PILImage.new("1", (1000, 800), 1).save(bilevel, format="PNG")
    white = load_image(bilevel.getvalue(), decode_max_pixels=200_000)
    assert white.scale == 2 and white.pixels.shape == (400, 500, 3) and white.pixels.min() == 255
    assert load_image(png.getvalue()).scale == 1  # without a budget: full size, as before


def test_memory_releaser_trims_twice_at_most_once_per_interval() -> None:
    calls: list[float] = []
    releaser = MemoryReleaser(interval=0.4, delay=0.05, trimmer=lambda: calls.append(time.monotonic()) is None)
    releaser.note(1_000)  # small: nothing to give back
    time.sleep(0.15)
    assert calls == []
    start = time.monotonic()
    for _ in range(5):
        releaser.note(40_000_000)
    time.sleep(0.2)
    assert len(calls) == 1 and calls[0] - start < 0.15  # soon after the decode
    time.sleep(0.4)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.39  # once more, an interval later (the request has ended)
    time.sleep(0.5)
    assert len(calls) == 2 and releaser.trims == 2  # then nothing until the next large decode
    releaser.close()
