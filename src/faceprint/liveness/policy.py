"""Liveness as a gate on the other operations: ``off`` (not checked), ``flag`` (checked and reported, never
refused) or ``require`` (a face judged an attack is refused: verify says "not live", identify names nobody,
enrolment rejects the photo). One policy object serves the library, the CLI and the HTTP service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from faceprint.errors import InvalidArgument
from faceprint.liveness.base import LivenessResult
from faceprint.types import Box

LivenessMode = Literal["off", "flag", "require"]
LIVENESS_MODES: tuple[str, ...] = get_args(LivenessMode)


@dataclass(frozen=True)
class LivenessPolicy:
    """When to check liveness and at which threshold (``threshold``, else the table's for ``apcer``, else the
    pipeline's default; see :meth:`faceprint.pipeline.Pipeline.liveness`)."""

    mode: str = "off"
    threshold: float | None = None
    apcer: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in LIVENESS_MODES:
            raise InvalidArgument(f"liveness must be one of {', '.join(LIVENESS_MODES)}, got {self.mode!r}")
        if self.threshold is not None and self.apcer is not None:
            raise InvalidArgument("give either a liveness threshold or an apcer, not both")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise InvalidArgument(f"a liveness threshold is a probability in [0, 1], got {self.threshold}")

    @property
    def checks(self) -> bool:
        """Liveness is measured (``flag`` or ``require``)."""
        return self.mode != "off"

    @property
    def required(self) -> bool:
        return self.mode == "require"

    def refuses(self, result: LivenessResult | None) -> bool:
        """``require`` and the face was judged an attack."""
        return self.required and result is not None and not result.live


def attack_reason(result: LivenessResult) -> str:
    """Why a face was refused, in the words every interface uses."""
    return f"liveness: judged an attack (P(live) {result.score:.2f} < {result.threshold:.2f})"


def refused_match(box: Box | None, result: LivenessResult) -> dict[str, object]:
    """The identify answer for a face refused by ``require``: nobody is named and nothing was searched (the
    keys of :meth:`faceprint.gallery.IdentifyAnswer.to_dict`, plus ``refused`` and ``liveness``)."""
    return {
        "box": None if box is None else [round(float(v), 2) for v in box],
        "match": None,
        "match_id": None,
        "score": None,
        "candidates": [],
        "threshold": None,
        "fmr": None,
        "fpir": None,
        "refused": attack_reason(result),
        "liveness": result.to_dict(),
    }
