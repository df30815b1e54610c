"""Request parameters that several routes share: the one threshold rule (``fmr`` | ``fpir`` | ``threshold``),
and the strict scalar types every route's parameters use.

Parameters arrive as JSON values or as form-field strings, so pydantic's fully strict mode (which refuses
``"0.001"``) cannot be used; instead the types below refuse what lax mode would silently coerce: booleans
as numbers (``"fmr": true`` is not 1.0), numbers written with absurdly many characters, and datetimes that
fall outside years 1900–9999 once converted to UTC (which would overflow or make no sense).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from faceprint.matching import rule_kind

#: Longest text accepted for a number given as a string (a form field): no 4,300-digit parses.
MAX_NUMBER_CHARS = 40
#: Datetimes, after conversion to UTC, must fall in these years.
MIN_YEAR, MAX_YEAR = 1900, 9999
#: Integers bound for SQLite (a signed 64-bit INTEGER).
SQL_INT_MAX = 2**63 - 1


def _plain_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, str) and len(value.strip()) > MAX_NUMBER_CHARS:
        raise ValueError(f"number is longer than {MAX_NUMBER_CHARS} characters")
    return value


def _utc_in_range(value: datetime) -> datetime:
    """Aware and in UTC (a naive time is taken as UTC), within :data:`MIN_YEAR`–:data:`MAX_YEAR`."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        utc = aware.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"must be between the years {MIN_YEAR} and {MAX_YEAR} in UTC") from None
    if not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise ValueError(f"must be between the years {MIN_YEAR} and {MAX_YEAR} in UTC")
    return utc


#: A float that refuses booleans and over-long strings.
StrictFloat = Annotated[float, BeforeValidator(_plain_number)]
#: An int that refuses booleans and over-long strings.
StrictInt = Annotated[int, BeforeValidator(_plain_number)]
#: An aware UTC datetime in years 1900–9999 (naive input is taken as UTC).
SaneDatetime = Annotated[datetime, AfterValidator(_utc_in_range)]


#: The ``liveness`` parameter of verify, identify and enrolment: ``off``, ``flag`` (each checked face carries
#: its ``liveness``) or ``require`` (a face judged an attack is refused); none: the server's FACEPRINT_LIVENESS.
LivenessMode = Annotated[
    Literal["off", "flag", "require"] | None,
    Field(
        description="Liveness check: off; flag (each checked face carries its liveness); require (a face judged "
        "an attack is refused). Default: the server's FACEPRINT_LIVENESS (off unless set)"
    ),
]


class LivenessParams(BaseModel):
    """``POST /v1/liveness``: at most one of ``threshold`` and ``apcer``; none: the model's table at APCER 0.01."""

    model_config = ConfigDict(extra="forbid")
    threshold: StrictFloat | None = Field(None, ge=0, le=1, description="P(live) threshold")
    apcer: StrictFloat | None = Field(
        None, ge=0, lt=1, description="Attack acceptance rate the threshold is chosen for instead (default 0.01)"
    )

    @model_validator(mode="after")
    def _one_rule(self) -> LivenessParams:
        if self.threshold is not None and self.apcer is not None:
            raise ValueError("give at most one of threshold and apcer")
        return self


class ThresholdParams(BaseModel):
    """At most one of ``fmr``, ``fpir`` and ``threshold``; none: FMR 1e-3 (as in the library and the CLI)."""

    model_config = ConfigDict(extra="forbid")
    fmr: StrictFloat | None = Field(
        None, gt=0, lt=1, description="Target false-match rate per comparison (default 1e-3)"
    )
    fpir: StrictFloat | None = Field(
        None,
        gt=0,
        lt=1,
        description="Target false-positive identification rate instead: for the collection's number of subjects "
        "(identify), or one comparison (verify: the same as an fmr)",
    )
    threshold: StrictFloat | None = Field(None, ge=-1, le=1, description="Raw cosine-score threshold instead")

    @model_validator(mode="after")
    def _one_rule(self) -> ThresholdParams:
        if sum(v is not None for v in (self.fmr, self.fpir, self.threshold)) > 1:
            raise ValueError("give at most one of fmr, fpir and threshold")
        return self

    @property
    def rule(self) -> str:
        """``fmr``, ``fpir`` or ``threshold``: what chooses the threshold of this request."""
        return rule_kind(fmr=self.fmr, fpir=self.fpir, threshold=self.threshold)


#: The optional ``source`` of a recognition request (a camera id, say): drift is tracked per source
#: (``faceprint drift``). The ``X-Faceprint-Source`` header says the same; the field wins.
Source = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Where the photo comes from (a camera id): drift is tracked per source. Same as the "
        "X-Faceprint-Source header.",
    ),
]
