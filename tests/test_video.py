"""Video: sources, tracking and per-track decisions on a real clip with real models (docs/video.md).

The clip (640×360, 29.97 fps, 275 frames; checked by eye): a wide stage shot (frames 0–19: Lin-Manuel Miranda
singing at the right, Alex Lacamoire tiny at the piano), Lacamoire in profile (20–81), Miranda frontal
(82–210), then the audience (211–274): Barack Obama, Michelle Obama (right of him), Marian Robinson and a
man at the left. Obama, Lacamoire and Miranda are enrolled from reference photos; Michelle Obama is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from faceprint.cli import app
from faceprint.gallery import enrol_images, open_gallery
from faceprint.video import VideoDecodeError, aggregate_vectors, open_source
from faceprint.video.sources import source_kind

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"
CLIP = DATA / "short_hamilton_clip.mp4"
REFERENCES = {
    "Lin-Manuel Miranda": DATA / "references" / "lin_manuel_miranda",
    "Alex Lacamoire": DATA / "references" / "alex_lacamoire",
    "Barack Obama": DATA / "references" / "barack_obama",
}
KEY = "ab" * 32
# dlib-resnet-v1 on the blurred, turned audience shot: Obama's track aggregates to 0.920 against his photos
# (0.894 before the mirrored chip became dlib's default), under the FMR 1e-3 threshold (0.929) but above the
# FMR 1e-2 one (0.910), which Michelle Obama (0.886) and Lacamoire's profile track (best candidate Miranda,
# 0.908) stay under. The rule was the raw 0.89 (FMR 4.6e-2), which now names that profile track Miranda:
# docs/video.md.
RULE = ["--fmr", "0.01"]

pytestmark = pytest.mark.skipif(not CLIP.is_file(), reason="needs ../shared/data/video")


def _centre(box: list[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory: pytest.TempPathFactory, pipeline) -> Path:
    path = tmp_path_factory.mktemp("video") / "gallery"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEPRINT_KEY", KEY)
        with open_gallery(path) as gallery:
            for name, folder in REFERENCES.items():
                report = enrol_images(gallery, pipeline, name, sorted(folder.iterdir()))
                assert report.accepted, name
    return path


@pytest.fixture(scope="module")
def watched(gallery_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("annotated") / "clip.mp4"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEPRINT_KEY", KEY)
        result = CliRunner().invoke(
            app, ["watch", str(CLIP), "--gallery", str(gallery_dir), "--every", "3", "--annotate", str(out), *RULE]
        )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return events, out


def test_summary_names_the_right_tracks(watched: tuple[list[dict], Path]) -> None:
    events, _ = watched
    assert events[-1]["type"] == "summary"
    tracks = events[-1]["tracks"]
    ends = {e["track_id"]: e for e in events if e["type"] == "track_end"}
    assert {t["track_id"] for t in tracks} == set(ends)
    named = {}
    for t in tracks:
        box = ends[t["track_id"]]["box"]
        x, _ = _centre(box)
        if t["first_frame"] >= 82 and t["last_frame"] <= 210:  # Miranda's close-up
            expected = {"Lin-Manuel Miranda"}
        elif t["first_frame"] >= 211:  # the audience: only Barack Obama (centre x ≈ 350) is enrolled
            expected = {"Barack Obama"} if 320 < x < 380 else {None}
        elif t["last_frame"] < 20:  # the wide shot: Miranda right, Lacamoire (too small to count) left
            expected = {"Lin-Manuel Miranda", None} if x > 400 else {"Alex Lacamoire", None}
        else:  # Lacamoire in profile
            expected = {"Alex Lacamoire", None}
        assert t["subject"] in expected, t
        named[t["subject"]] = t
        assert t["last_frame"] >= t["first_frame"] and t["frames_seen"] >= 1
    # one track per shot for Miranda's close-up and Obama, none crossing a cut
    miranda = [t for t in tracks if t["subject"] == "Lin-Manuel Miranda" and t["first_frame"] >= 82]
    assert len(miranda) == 1 and miranda[0]["first_frame"] <= 90 and miranda[0]["last_frame"] >= 205
    obama = [t for t in tracks if t["subject"] == "Barack Obama"]
    assert len(obama) == 1 and obama[0]["first_frame"] >= 211 and obama[0]["last_frame"] >= 270
    # Michelle Obama (right of Barack, centre x ≈ 415) stays unknown
    michelle = [t for t in tracks if t["first_frame"] >= 211 and 390 < _centre(ends[t["track_id"]]["box"])[0] < 440]
    assert len(michelle) == 1 and michelle[0]["subject"] is None
    assert all(t["score"] is None or 0 < t["score"] <= 1 for t in tracks)


def test_events_are_well_formed(watched: tuple[list[dict], Path]) -> None:
    events, _ = watched
    keys = {"type", "track_id", "frame", "time_s", "box", "subject", "score"}
    for e in events[:-1]:
        assert e["type"] in {"track_start", "identity", "track_end"} and keys <= set(e), e
    identities = [e for e in events if e["type"] == "identity"]
    assert identities and all(e["evidence_frames"] >= 3 for e in identities)  # never named from one frame
    assert all(e["rule"] == "fmr" and e["threshold"] == pytest.approx(0.9102, abs=1e-4) for e in identities)
    starts = [e["track_id"] for e in events if e["type"] == "track_start"]
    assert len(starts) == len(set(starts))


def test_annotated_video_is_playable(watched: tuple[list[dict], Path]) -> None:
    _, out = watched
    capture = cv2.VideoCapture(str(out))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 275
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 640


def test_bad_files_fail_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPRINT_HOME", str(tmp_path / "home"))  # no default gallery: tracking only
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(CLIP.read_bytes()[:400_000])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    runner = CliRunner()
    for path in (truncated, text, tmp_path / "missing.webm"):
        result = runner.invoke(app, ["watch", str(path)])
        assert result.exit_code == 2, result.output
        assert str(path) in result.output and "error:" in result.output
    with pytest.raises(VideoDecodeError, match="not a video"):
        open_source(text)


def test_source_kinds_and_frames() -> None:
    assert source_kind(0) == "camera" and source_kind("1") == "camera"
    assert source_kind("rtsp://cam/stream") == "stream" and source_kind("https://x/live.m3u8") == "stream"
    assert source_kind("clip.mp4") == "file"
    with open_source(CLIP) as source:
        assert source.frame_count == 275 and abs(source.fps - 29.97) < 0.01
        frame = next(iter(source))
    assert frame.index == 0 and frame.time_s == 0.0
    assert frame.pixels.dtype == np.uint8 and frame.pixels.shape == (360, 640, 3)


def test_aggregate_is_quality_weighted() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    out = aggregate_vectors(np.stack([a, b]), np.array([3.0, 1.0]))
    assert np.isclose(np.linalg.norm(out), 1.0) and out[0] > out[1] > 0


def test_enroll_from_video(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPRINT_KEY", KEY)
    gallery = tmp_path / "g"
    result = CliRunner().invoke(
        app, ["enroll", "--gallery", str(gallery), "--subject", "Lacamoire", "--from-video", str(CLIP), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert 1 <= report["accepted"] <= 5 and all(q >= 0.5 for q in report["qualities"])
    with open_gallery(gallery) as store:
        assert store.get_subject("Lacamoire").template_count == report["accepted"]
