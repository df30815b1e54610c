"""Bulk enrolment end to end: ``faceprint enroll --from-folders ROOT --workers N`` in real subprocesses on
real photos (HOG detector, photos under 1 MP to keep the module short on 2 cores).

The folder tree is built in a temporary directory from symlinks to the shared photos, plus an image with
no face and a file that is not an image. Checked: every photo ends enrolled exactly once — after a clean
run, after a run killed with SIGKILL mid-way and resumed, and after a crash between the gallery commit
and the checkpoint record — and progress lines carry a rate and an ETA. ``--ray`` runs the same
enrolment on Ray actors.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from faceprint.gallery import open_gallery
from tests.conftest import IDENTITIES

MAX_PIXELS = 1_000_000
CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]


def _small_photos() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for person in sorted(p.name for p in IDENTITIES.iterdir() if p.is_dir()):
        for photo in sorted((IDENTITIES / person).glob("*.jpg")):
            with PILImage.open(photo) as im:
                if im.width * im.height <= MAX_PIXELS:
                    out.setdefault(person, []).append(photo)
    return out


def _landscape() -> bytes:
    y, x = np.mgrid[0:240, 0:320]
    arr = np.stack([(x * 0.8) % 256, (y * 1.1) % 256, ((x + y) * 0.5) % 256], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def make_root(base: Path, limit: int | None = None) -> Path:
    """ROOT/<person>/<photo> as symlinks to the shared photos (never copies), plus two rejects."""
    root = base / "root"
    count = 0
    for person, photos in _small_photos().items():
        for photo in photos:
            if limit is not None and count >= limit:
                break
            (root / person).mkdir(parents=True, exist_ok=True)
            (root / person / photo.name).symlink_to(photo)
            count += 1
    for person in ("person01", "person02"):
        (root / person).mkdir(parents=True, exist_ok=True)
    (root / "person01" / "landscape.jpg").write_bytes(_landscape())
    (root / "person02" / "broken.jpg").write_bytes(b"this is not a JPEG")
    return root


@pytest.fixture
def env(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The CLI's environment; also this process's, so the test can open the gallery it wrote."""
    monkeypatch.setenv("FACEPRINT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    return dict(os.environ)


def enrol_cmd(root: Path, *extra: str) -> list[str]:
    return [*CLI, "enroll", "--from-folders", str(root), "--detector", "hog", "--json", *extra]


def checkpoint_file(env: dict[str, str]) -> Path:
    (found,) = (Path(env["FACEPRINT_HOME"]) / "gallery" / "bulk-enrol").glob("enrol-*.jsonl")
    return found


def done_records(env: dict[str, str]) -> list[dict]:
    lines = checkpoint_file(env).read_text().splitlines()
    return [r for r in (json.loads(line) for line in lines if line.endswith("}")) if r["state"] == "done"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_enrolled_exactly_once(root: Path, env: dict[str, str], report: list[dict]) -> None:
    """The gallery holds one template per accepted photo, no duplicates, and every face photo is in."""
    accepted = {o["image"] for r in report for o in r["images"] if o["accepted"]}
    rejected = {Path(o["image"]).name for r in report for o in r["images"] if not o["accepted"]}
    assert {"landscape.jpg", "broken.jpg"} <= rejected
    photos = sorted(p for p in root.rglob("*.jpg"))
    assert sum(len(r["images"]) for r in report) == len(photos), "every file has exactly one outcome"
    stored: Counter[tuple[str, str]] = Counter()
    with open_gallery(Path(env["FACEPRINT_HOME"]) / "gallery", create=False) as gallery:
        for subject in gallery.list_subjects(limit=500).items:
            for t in gallery.list_templates(subject.id):
                stored[(subject.name, t.source_sha256)] += 1
    assert max(stored.values()) == 1, f"a photo was enrolled twice: {stored.most_common(3)}"
    expected = Counter((Path(p).parent.name, sha(Path(p))) for p in accepted)
    assert stored == expected
    assert len(accepted) >= len(photos) - 4, "the quality gate should pass most of these photos"


def test_workers_enrol_every_photo_once_with_progress_and_a_crash_before_the_checkpoint(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = make_root(tmp_path)
    run = subprocess.run(enrol_cmd(root, "--workers", "2"), env=env, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert_enrolled_exactly_once(root, env, report)
    progress = [line for line in run.stderr.splitlines() if line.startswith("enrol: ")]
    assert progress and "/s, ETA " in progress[-1]
    total = len(list(root.rglob("*.jpg")))
    assert progress[-1].startswith(f"enrol: {total}/{total} photos")

    # A run killed after the gallery committed a photo but before its "done" record: drop the last done
    # record of an accepted photo (its "writing" record stays), as such a kill would have left the file.
    path = checkpoint_file(env)
    lines = path.read_text().splitlines()
    last_done = max(i for i, line in enumerate(lines) if '"state":"done"' in line and '"accepted":true' in line)
    path.write_text("\n".join(lines[:last_done] + lines[last_done + 1 :]) + "\n")
    again = subprocess.run(enrol_cmd(root, "--workers", "2"), env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"({total} from an earlier run)" in again.stderr  # recovered from the gallery, not analysed again
    assert_enrolled_exactly_once(root, env, json.loads(again.stdout))


def test_a_run_killed_midway_resumes_and_enrols_each_photo_exactly_once(tmp_path: Path, env: dict[str, str]) -> None:
    root = make_root(tmp_path, limit=9)
    total = len(list(root.rglob("*.jpg")))
    proc = subprocess.Popen(
        enrol_cmd(root, "--workers", "2"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes the workers too
    )
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            ckpt = Path(env["FACEPRINT_HOME"]) / "gallery" / "bulk-enrol"
            if any(ckpt.glob("enrol-*.jsonl")) and len(done_records(env)) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finished_before = len({r["path"] for r in done_records(env)})
    assert 3 <= finished_before < total

    resumed = subprocess.run(enrol_cmd(root, "--workers", "2"), env=env, capture_output=True, text=True, timeout=170)
    assert resumed.returncode == 0, resumed.stderr
    assert "from an earlier run" in resumed.stderr
    report = json.loads(resumed.stdout)
    assert_enrolled_exactly_once(root, env, report)
    assert len({r["path"] for r in done_records(env)}) == total


def test_ray_actors_enrol_the_same(tmp_path: Path, env: dict[str, str]) -> None:
    pytest.importorskip("ray", reason="--ray needs the [ray] extra: pip install 'ray[serve]'")
    root = make_root(tmp_path, limit=4)
    run = subprocess.run(
        enrol_cmd(root, "--ray", "--workers", "2"), env=env, capture_output=True, text=True, timeout=170
    )
    assert run.returncode == 0, run.stderr
    assert_enrolled_exactly_once(root, env, json.loads(run.stdout))


def test_workers_need_from_folders(tmp_path: Path, env: dict[str, str]) -> None:
    photo = next(iter(_small_photos().values()))[0]
    run = subprocess.run(
        [*CLI, "enroll", "--subject", "ada", str(photo), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "--from-folders" in run.stderr


def test_two_runs_of_the_same_enrolment_cannot_overlap(tmp_path: Path) -> None:
    from faceprint.scale.checkpoint import Checkpoint, CheckpointBusy

    first = Checkpoint(tmp_path / "enrol-x.jsonl")
    try:
        with pytest.raises(CheckpointBusy, match="another `faceprint enroll` is running"):
            Checkpoint(tmp_path / "enrol-x.jsonl")
    finally:
        first.close()
    Checkpoint(tmp_path / "enrol-x.jsonl").close()  # free again once the first run is over
