"""Liveness (presentation-attack detection): is a face a live person in front of the camera, or a printed
photo or a screen held up to it? See docs/liveness.md for what passive liveness can and cannot stop."""

from faceprint.liveness.base import LivenessModel, LivenessResult, LivenessUnavailable
from faceprint.liveness.calibration import DEFAULT_APCER, LivenessCalibration, shipped_liveness_calibration

__all__ = [
    "DEFAULT_APCER",
    "LivenessCalibration",
    "LivenessModel",
    "LivenessResult",
    "LivenessUnavailable",
    "shipped_liveness_calibration",
]
