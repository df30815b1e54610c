"""The liveness stage on the real model (the faceplugin pack) and real frames: live faces pass, printed photos
do not, and without a model nothing passes as live."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceprint.errors import InvalidArgument
from faceprint.liveness import LivenessCalibration, LivenessUnavailable
from faceprint.liveness.calibration import LivenessCalibrationError
from faceprint.liveness.fasnet import liveness_crop_box
from faceprint.pipeline import Pipeline, PipelineConfig
from tests.conftest import DATA

NUAA = DATA / "spoof" / "nuaa"


def frames(kind: str, per_subject: int = 1) -> list[Path]:
    out: list[Path] = []
    for subject in sorted((NUAA / kind).iterdir())[:3]:
        out += sorted(subject.iterdir())[:: max(1, 24 // per_subject)][:per_subject]
    return out


@pytest.fixture(scope="module")
def pack(faceplugin_store: Path) -> Pipeline:
    return Pipeline(PipelineConfig(embedder="faceplugin-mbf", model_dir=faceplugin_store))


def test_live_faces_pass_and_printed_photos_do_not(pack: Pipeline) -> None:
    for kind, expected in (("live", True), ("print", False)):
        for frame in frames(kind, 2):
            results = pack.liveness(frame)
            assert results, f"{frame}: no face"
            largest = max(results, key=lambda r: (r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))
            assert largest.live is expected, (frame, largest)
            assert largest.model == "faceplugin-liveness" and 0 <= largest.score <= 1
            assert set(largest.to_dict()) == {"box", "live", "score", "threshold", "apcer", "bpcer", "model"}


def test_the_given_detections_are_scored_in_one_batch(pack: Pipeline) -> None:
    frame = frames("live")[0]
    faces = pack.detect(frame)
    twice = pack.liveness(frame, [faces[0], faces[0]], threshold=0.9)
    assert len(twice) == 2 and twice[0].score == pytest.approx(twice[1].score, abs=1e-6)
    assert twice[0].threshold == 0.9 and twice[0].apcer is None  # an explicit threshold states no rates
    with pytest.raises(InvalidArgument, match="either a liveness threshold or an apcer"):
        pack.liveness(frame, threshold=0.5, apcer=0.01)


def test_without_a_model_nothing_passes_as_live(tmp_path: Path) -> None:
    bare = Pipeline(PipelineConfig(model_dir=tmp_path / "empty-store"))
    with pytest.raises(LivenessUnavailable, match="faceprint models install faceplugin"):
        bare.liveness(frames("live")[0])


def test_crop_box_follows_the_models_own_rule() -> None:
    # A face in the middle: the box ×2.7 around its centre.
    assert liveness_crop_box(np.array([300, 200, 340, 240]), 640, 480, 2.7) == (266, 166, 374, 274)
    # Near the edge: shifted inside the image, same size.
    x1, y1, x2, y2 = liveness_crop_box(np.array([0, 0, 40, 40]), 640, 480, 2.7)
    assert (x1, y1) == (0, 0) and (x2 - x1, y2 - y1) == (108, 108)
    # A face too large for ×2.7: the scale shrinks to what the image holds.
    x1, y1, x2, y2 = liveness_crop_box(np.array([100, 100, 400, 400]), 640, 480, 2.7)
    assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480 and (y2 - y1) >= 470


def test_calibration_table_by_hand() -> None:
    table = LivenessCalibration.from_scores("m", np.array([0.9, 0.8, 0.3]), np.array([0.1, 0.4, 0.85]), "hand")
    # APCER at t: attacks scored >= t; BPCER at t: live faces scored < t.
    assert table.threshold_for(1 / 3) == pytest.approx(0.8)
    assert table.rates_at(0.8) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert table.threshold_for(0.0) == pytest.approx(0.9)  # above every attack (0.85): APCER 0, BPCER 2/3
    assert table.rates_at(0.9) == (0.0, pytest.approx(2 / 3))
    with pytest.raises(LivenessCalibrationError, match="cannot resolve an APCER below"):
        table.threshold_for(0.1)
    with pytest.raises(InvalidArgument):
        LivenessCalibration.from_scores("m", np.array([]), np.array([0.1]), "empty")
