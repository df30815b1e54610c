"""Who is on a track: one identification from the track's best frames, not one per frame.

Every tracked face is embedded and scored by the pipeline's quality measure (size, sharpness, pose,
exposure: :func:`faceprint.quality.assess`). A frame is *evidence* when its face is at least
``min_face_px`` wide and its quality at least ``min_quality``; the track keeps its ``max_frames`` best
pieces of evidence. Once it holds ``min_frames`` of them it is decided: the kept vectors are aggregated into
one faceprint (the quality-weighted mean of the normalised vectors, renormalised) and that faceprint is
identified against the gallery under the usual threshold rule (``fmr`` | ``fpir`` | ``threshold``, as for
photos: :meth:`~faceprint.gallery.base.Gallery.identify`). Each new piece of evidence re-decides the track,
so a name can be revised (or withdrawn) as evidence accumulates; a track is never named from one frame, and
a face the gallery does not hold stays unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from faceprint.gallery.base import DEFAULT_COLLECTION, Gallery
from faceprint.gallery.model import Identification
from faceprint.matching import Calibration, ThresholdRule, check_one_rule, normalise
from faceprint.types import Faceprint


@dataclass(frozen=True)
class DecisionPolicy:
    """When a track's frames count as evidence and when the track is decided."""

    min_frames: int = 3  # pieces of evidence before a track is decided (never one frame)
    max_frames: int = 12  # best pieces of evidence kept per track (by quality)
    min_face_px: float = 40.0  # narrower faces never count (the enrolment gate's minimum)
    min_quality: float = 0.1  # the pipeline's quality score in [0, 1]


def aggregate_vectors(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of the L2-normalised rows, renormalised (weights ≤ 0 count as tiny, not zero)."""
    w = np.maximum(np.asarray(weights, dtype=np.float32), 1e-6)
    mean = (normalise(vectors) * w[:, None]).sum(axis=0)
    return normalise(mean)


@dataclass(frozen=True)
class TrackDecision:
    """A track's current identity: ``subject`` ``None`` = unknown. ``score``: the aggregated faceprint's
    score against the subject (or, for unknown, against the best candidate; ``None`` with no candidate)."""

    track_id: int
    subject: str | None
    subject_id: str | None
    score: float | None
    threshold: float
    rule: ThresholdRule
    frames: int  # pieces of evidence aggregated
    identification: Identification

    def to_dict(self) -> dict[str, object]:
        rule = self.rule
        return {
            "subject": self.subject,
            "subject_id": self.subject_id,
            "score": None if self.score is None else round(self.score, 6),
            "threshold": round(self.threshold, 6),
            "rule": "threshold" if rule.fmr is None else ("fpir" if rule.fpir is not None else "fmr"),
            "fmr": rule.fmr,
            "fpir": rule.fpir,
            "evidence_frames": self.frames,
        }


@dataclass
class _Evidence:
    vectors: list[np.ndarray] = field(default_factory=list)
    qualities: list[float] = field(default_factory=list)
    seen: int = 0  # usable frames ever offered (kept or not)


class TrackIdentifier:
    """Collects each track's evidence and decides it against ``gallery``'s ``collection``."""

    def __init__(
        self,
        gallery: Gallery | None,
        model_id: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        fmr: float | None = None,
        fpir: float | None = None,
        threshold: float | None = None,
        calibration: Calibration | None = None,
        policy: DecisionPolicy | None = None,
    ) -> None:
        check_one_rule(fmr=fmr, fpir=fpir, threshold=threshold)
        self.gallery = gallery
        self.model_id = model_id
        self.collection = collection
        self.rule_args: dict[str, float | None] = {"fmr": fmr, "fpir": fpir, "threshold": threshold}
        self.calibration = calibration
        self.policy = policy or DecisionPolicy()
        self._evidence: dict[int, _Evidence] = {}
        self.decisions: dict[int, TrackDecision] = {}

    def usable(self, faceprint: Faceprint) -> bool:
        det = faceprint.detection
        width = det.width if det is not None else 0.0
        return width >= self.policy.min_face_px and (faceprint.quality or 0.0) >= self.policy.min_quality

    def add(self, track_id: int, faceprint: Faceprint) -> bool:
        """Offer one frame's faceprint of the track; ``True`` when it was kept as evidence."""
        if not self.usable(faceprint):
            return False
        ev = self._evidence.setdefault(track_id, _Evidence())
        ev.seen += 1
        q = float(faceprint.quality or 0.0)
        if len(ev.vectors) < self.policy.max_frames:
            ev.vectors.append(faceprint.vector)
            ev.qualities.append(q)
            return True
        worst = int(np.argmin(ev.qualities))
        if q <= ev.qualities[worst]:
            return False
        ev.vectors[worst], ev.qualities[worst] = faceprint.vector, q
        return True

    def evidence(self, track_id: int) -> int:
        ev = self._evidence.get(track_id)
        return 0 if ev is None else ev.seen

    def aggregate(self, track_id: int) -> Faceprint | None:
        """The track's aggregated faceprint, or ``None`` before ``min_frames`` pieces of evidence."""
        ev = self._evidence.get(track_id)
        if ev is None or len(ev.vectors) < self.policy.min_frames:
            return None
        q = np.asarray(ev.qualities, dtype=np.float32)
        vector = aggregate_vectors(np.stack(ev.vectors), q)
        return Faceprint(vector=vector, model_id=self.model_id, quality=float(q.mean()))

    def decide(self, track_id: int) -> TrackDecision | None:
        """Identify the track's aggregated faceprint (``None``: not enough evidence yet, or no gallery)."""
        probe = self.aggregate(track_id)
        if probe is None or self.gallery is None:
            return None
        (answer,) = self.gallery.identify(
            [probe], collection=self.collection, top_k=3, calibration=self.calibration, one_to_one=False,
            **self.rule_args,
        )  # fmt: skip
        top = answer.match or (answer.candidates[0] if answer.candidates else None)
        decision = TrackDecision(
            track_id=track_id,
            subject=None if answer.match is None else answer.match.subject,
            subject_id=None if answer.match is None else answer.match.subject_id,
            score=None if top is None else float(top.score),
            threshold=float(answer.threshold),
            rule=answer.rule,
            frames=len(self._evidence[track_id].vectors),
            identification=answer,
        )
        self.decisions[track_id] = decision
        return decision

    def forget(self, track_id: int) -> None:
        self._evidence.pop(track_id, None)
