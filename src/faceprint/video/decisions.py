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

Two rules across decisions:

- **One subject per moment** (``one_to_one``): a person is on one track at a time, so of two live tracks
  whose best passing candidate is the same subject, the one with the higher score gets it and the other falls
  back to its next passing candidate, or to unknown (as identification does for the faces of one photo).
  The displaced track's new decision is in :attr:`TrackIdentifier.displaced` after :meth:`decide`.
- **No near-ties**: a subject is named only when its score leads the next candidate's by ``min_lead``; a track
  about as close to two people (a profile, a blurred face) stays unknown rather than named at random.
- **No flip-flopping** (hysteresis): a named track changes its name (to another subject, or to unknown) only
  when the new answer has been the answer ``switch_after`` decisions in a row, or at once when the new subject
  scores ``switch_margin`` above the current one. A track that is not named yet takes its first answer at once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from faceprint.gallery.base import DEFAULT_COLLECTION, Gallery
from faceprint.gallery.model import Candidate, Identification
from faceprint.matching import Calibration, ThresholdRule, check_one_rule, normalise
from faceprint.types import Faceprint


@dataclass(frozen=True)
class DecisionPolicy:
    """When a track's frames count as evidence and when the track is decided."""

    min_frames: int = 3  # pieces of evidence before a track is decided (never one frame)
    max_frames: int = 12  # best pieces of evidence kept per track (by quality)
    min_face_px: float = 40.0  # narrower faces never count (the enrolment gate's minimum)
    min_quality: float = 0.1  # the pipeline's quality score in [0, 1]
    one_to_one: bool = True  # a subject is on at most one live track at a time
    switch_after: int = 2  # consecutive decisions a new answer needs to replace a track's name
    switch_margin: float = 0.03  # ... or this much higher a score than the current subject's, at once
    min_lead: float = 0.005  # a subject is named only this far ahead of the next candidate (no near-ties)


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
        self.decisions: dict[int, TrackDecision] = {}  # live tracks' current decisions
        self._answers: dict[int, Identification] = {}  # each live track's latest identification
        self._streak: dict[int, tuple[str | None, int]] = {}  # a challenger to the current name, decisions in a row
        self.displaced: list[TrackDecision] = []  # tracks whose name the last decide() took away (one-to-one)
        self._rivals: set[int] | None = None

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

    def decide(self, track_id: int, rivals: Collection[int] | None = None) -> TrackDecision | None:
        """Identify the track's aggregated faceprint (``None``: not enough evidence yet, or no gallery), under
        the one-to-one and hysteresis rules (module docstring). ``rivals``: the tracks it competes with for a
        subject (those seen on the same frame; default every live track) — a track lost a moment ago keeps
        its name when the same person comes back on a new track. Tracks whose name this took away are in
        :attr:`displaced`."""
        self.displaced = []
        self._rivals = None if rivals is None else set(rivals)
        probe = self.aggregate(track_id)
        if probe is None or self.gallery is None:
            return None
        (answer,) = self.gallery.identify(
            [probe], collection=self.collection, top_k=5, calibration=self.calibration, one_to_one=False,
            **self.rule_args,
        )  # fmt: skip
        self._answers[track_id] = answer
        proposed = self._best_free(track_id, answer)
        current = self.decisions.get(track_id)
        chosen = proposed if current is None else self._damped(track_id, current, proposed, answer)
        decision = self.decisions[track_id] = self._decision(track_id, answer, chosen)
        if chosen is not None and self.policy.one_to_one:
            for other, held in list(self.decisions.items()):
                if other != track_id and held.subject_id == chosen.subject_id and self._rival(other):
                    fallback = self._best_free(other, self._answers[other])
                    self.decisions[other] = self._decision(other, self._answers[other], fallback)
                    self._streak.pop(other, None)
                    self.displaced.append(self.decisions[other])
        return decision

    def _passing(self, answer: Identification) -> list[Candidate]:
        return sorted((c for c in answer.candidates if c.score >= answer.threshold), key=lambda c: -c.score)

    def _free(self, track_id: int, answer: Identification) -> list[Candidate]:
        """The passing candidates, best first, that no other live track holds with a higher score."""
        held = {
            d.subject_id: d.score or 0.0
            for t, d in self.decisions.items()
            if t != track_id and d.subject_id is not None and self.policy.one_to_one and self._rival(t)
        }
        return [c for c in self._passing(answer) if not (c.subject_id in held and held[c.subject_id] >= c.score)]

    def _rival(self, track_id: int) -> bool:
        return self._rivals is None or track_id in self._rivals

    def _best_free(self, track_id: int, answer: Identification) -> Candidate | None:
        """The best free candidate, if it leads the next candidate down by ``min_lead`` (a face about as close
        to two people is named as neither)."""
        free = self._free(track_id, answer)
        if not free:
            return None
        best = free[0]
        below = [
            c.score for c in answer.candidates if c.score < best.score or (c is not best and c.score == best.score)
        ]
        if below and best.score - max(below) < self.policy.min_lead:
            return None
        return best

    def _damped(
        self, track_id: int, current: TrackDecision, proposed: Candidate | None, answer: Identification
    ) -> Candidate | None:
        """Hysteresis: keep the current name unless the challenger has won ``switch_after`` decisions in a row
        or beats it by ``switch_margin``; an unnamed track takes any answer at once."""
        new_id = None if proposed is None else proposed.subject_id
        if current.subject_id is None or new_id == current.subject_id:
            self._streak.pop(track_id, None)
            return proposed
        mine = next((c for c in self._free(track_id, answer) if c.subject_id == current.subject_id), None)
        if mine is None:  # the current subject no longer passes the threshold: no name to keep
            self._streak.pop(track_id, None)
            return proposed
        if proposed is not None and proposed.score >= mine.score + self.policy.switch_margin:
            self._streak.pop(track_id, None)
            return proposed
        leader, count = self._streak.get(track_id, (new_id, 0))
        count = count + 1 if leader == new_id else 1
        if count >= self.policy.switch_after:
            self._streak.pop(track_id, None)
            return proposed
        self._streak[track_id] = (new_id, count)
        return mine

    def _decision(self, track_id: int, answer: Identification, chosen: Candidate | None) -> TrackDecision:
        top = chosen or (answer.candidates[0] if answer.candidates else None)
        ev = self._evidence.get(track_id)
        return TrackDecision(
            track_id=track_id,
            subject=None if chosen is None else chosen.subject,
            subject_id=None if chosen is None else chosen.subject_id,
            score=None if top is None else float(top.score),
            threshold=float(answer.threshold),
            rule=answer.rule,
            frames=0 if ev is None else len(ev.vectors),
            identification=answer,
        )

    def forget(self, track_id: int) -> None:
        """The track ended: its evidence and decision are dropped (its subject is free for other tracks)."""
        self._evidence.pop(track_id, None)
        self.decisions.pop(track_id, None)
        self._answers.pop(track_id, None)
        self._streak.pop(track_id, None)
