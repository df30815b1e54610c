"""Request parameters that several routes share: the one threshold rule (``fmr`` | ``fpir`` | ``threshold``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from faceprint.matching import rule_kind


class ThresholdParams(BaseModel):
    """At most one of ``fmr``, ``fpir`` and ``threshold``; none: FMR 1e-3 (as in the library and the CLI)."""

    model_config = ConfigDict(extra="forbid")
    fmr: float | None = Field(None, gt=0, lt=1, description="Target false-match rate per comparison (default 1e-3)")
    fpir: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Target false-positive identification rate instead: for the collection's number of subjects "
        "(identify), or one comparison (verify: the same as an fmr)",
    )
    threshold: float | None = Field(None, ge=-1, le=1, description="Raw cosine-score threshold instead")

    @model_validator(mode="after")
    def _one_rule(self) -> ThresholdParams:
        if sum(v is not None for v in (self.fmr, self.fpir, self.threshold)) > 1:
            raise ValueError("give at most one of fmr, fpir and threshold")
        return self

    @property
    def rule(self) -> str:
        """``fmr``, ``fpir`` or ``threshold``: what chooses the threshold of this request."""
        return rule_kind(fmr=self.fmr, fpir=self.fpir, threshold=self.threshold)
