"""Liveness (presentation-attack detection): is a face a live person in front of the camera, or a printed
photo or a screen held up to it? See docs/liveness.md for what passive liveness can and cannot stop."""

from faceprint.liveness.base import LivenessModel, LivenessResult, LivenessUnavailable
from faceprint.liveness.calibration import DEFAULT_APCER, LivenessCalibration, shipped_liveness_calibration
from faceprint.liveness.policy import LIVENESS_MODES, LivenessMode, LivenessPolicy, attack_reason, refused_match

__all__ = [
    "DEFAULT_APCER",
    "LIVENESS_MODES",
    "LivenessCalibration",
    "LivenessMode",
    "LivenessModel",
    "LivenessPolicy",
    "LivenessResult",
    "LivenessUnavailable",
    "attack_reason",
    "refused_match",
    "shipped_liveness_calibration",
]
