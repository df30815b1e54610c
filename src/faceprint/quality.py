"""Face quality: size, sharpness, pose and exposure → one score in [0, 1] plus readable reasons.

Used to gate enrolment: a face that fails a check is rejected with the reason, never enrolled silently.
The checks are cheap measurements on the detection and its aligned chip, not a learned model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from faceprint.types import Detection


@dataclass(frozen=True)
class QualityPolicy:
    min_face_px: float = 40.0  # box width in source pixels
    min_sharpness: float = 25.0  # variance of the Laplacian on the grey chip
    max_yaw: float = 0.6  # yaw angle / 90° (estimate_yaw): 0 = frontal, 0.6 = 54°, 1 = profile
    min_brightness: float = 40.0
    max_brightness: float = 220.0


@dataclass(frozen=True)
class Quality:
    score: float
    face_px: float
    sharpness: float
    yaw: float
    brightness: float
    reasons: tuple[str, ...] = field(default=())

    @property
    def acceptable(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {
            "score": round(self.score, 3),
            "face_px": round(self.face_px, 1),
            "sharpness": round(self.sharpness, 1),
            "yaw": round(self.yaw, 3),
            "brightness": round(self.brightness, 1),
            "reasons": list(self.reasons),
        }


# How far in front of the eyes' line each scheme's nose point sits, in half eye spans (d/h below). With the
# eyes at ±h and the nose point d in front of them, a head turned by θ shows the nose point (d/h)·tan θ half
# spans off the eyes' midpoint. dlib's nose base sits closer to the eyes' plane than ArcFace's nose tip: on the
# same 743 celeba_wild faces the tip's offset is 1.19× the base's (docs/evaluation.md, "Pose estimate").
_NOSE_DEPTH = {"dlib5": 0.5, "arcface5": 0.6}


def estimate_yaw(detection: Detection) -> float:
    """Head turn in [0, 1): the yaw angle as a fraction of 90° (0 = frontal, 0.5 = 45°, → 1 in profile).

    From the 5 points: the nose's offset from the eyes' midpoint along the eye axis, in half eye spans, is
    ``(d/h)·tan(yaw)`` (see ``_NOSE_DEPTH``), so the angle is ``atan(offset / (d/h))``. The same head gives the
    same angle with either landmark scheme, and the estimate never saturates: a ratio clipped at 1.0 (the
    nose point level with an eye, about 45° for the nose tip) read as "profile" before.
    """
    if detection.landmarks is None:
        return 0.0
    pts = np.asarray(detection.landmarks, dtype=np.float64)
    if detection.landmark_scheme == "dlib5":
        left_eye, right_eye, nose = pts[0:2].mean(axis=0), pts[2:4].mean(axis=0), pts[4]
    else:  # arcface5: eye centres, nose tip, mouth corners
        left_eye, right_eye, nose = pts[0], pts[1], pts[2]
    axis = left_eye - right_eye
    span = float(np.linalg.norm(axis))
    if span < 1e-6:
        return 1.0
    mid = (left_eye + right_eye) / 2
    offset = abs(float(np.dot(nose - mid, axis / span))) / (span / 2)
    depth = _NOSE_DEPTH.get(detection.landmark_scheme, _NOSE_DEPTH["arcface5"])
    return float(np.arctan(offset / depth) / (np.pi / 2))


def assess(detection: Detection, chip: np.ndarray, policy: QualityPolicy | None = None) -> Quality:
    """Measure one face. ``chip`` is its aligned RGB chip."""
    policy = policy or QualityPolicy()
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    # Only the centre of the chip: the padding holds background and hair.
    h, w = grey.shape
    centre = grey[h // 5 : h - h // 5, w // 5 : w - w // 5]
    sharpness = float(cv2.Laplacian(centre, cv2.CV_64F).var())
    brightness = float(centre.mean())
    face_px = float(detection.width)
    yaw = estimate_yaw(detection)
    reasons = []
    if face_px < policy.min_face_px:
        reasons.append(f"face too small: {face_px:.0f} px wide, need {policy.min_face_px:.0f}")
    if sharpness < policy.min_sharpness:
        reasons.append(f"too blurred: sharpness {sharpness:.0f}, need {policy.min_sharpness:.0f}")
    if yaw > policy.max_yaw:
        reasons.append(f"head turned too far: yaw {yaw:.2f}, limit {policy.max_yaw:.2f}")
    if brightness < policy.min_brightness:
        reasons.append(f"too dark: mean brightness {brightness:.0f}")
    elif brightness > policy.max_brightness:
        reasons.append(f"overexposed: mean brightness {brightness:.0f}")
    parts = [
        min(1.0, face_px / (2 * policy.min_face_px)),
        min(1.0, sharpness / (4 * policy.min_sharpness)),
        1.0 - min(1.0, yaw),
        1.0 - min(1.0, abs(brightness - 128.0) / 128.0),
    ]
    score = float(np.prod(parts) ** (1 / len(parts)))
    return Quality(score, face_px, sharpness, yaw, brightness, tuple(reasons))
