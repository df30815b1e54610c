"""The service's settings: one frozen object, read from ``FACEPRINT_*`` variables or given directly.

Every invalid value is refused at start-up with an error that names the variable, never silently replaced
by a default.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from faceprint.errors import FaceprintError, ModelError
from faceprint.liveness import LIVENESS_MODES
from faceprint.pipeline import PipelineConfig

SERVICE_DB_NAME = "service.sqlite3"
# Default admission queue per inference worker (docs/deploy.md, "Sizing the admission queue"). Measured with
# Poisson arrivals (benchmarks/service.py --open, 2 workers): 4 per worker refused 0.3-0.7 % of requests at
# 75 % of saturation, 8 refused none; and 8 bound the wait of the last admitted request to ~0.5 s (dlib
# profile) / ~0.2 s (ArcFace pack) on 2 cores.
QUEUE_PER_WORKER = 8
# Open files kept back from the connection cap's default: the gallery and service databases (up to 10 each),
# model files, the event loop, logs, and the accepts that are refused at the cap.
FD_RESERVE = 128
MAX_CONNECTIONS_CEILING = 16_384  # the default when the open-files limit is unlimited or huge


def default_max_connections() -> int:
    """The process's open-files limit minus :data:`FD_RESERVE` (at least 16): beyond it, no descriptor would
    be left for the databases, so ``/healthz`` and admitted requests would fail."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CEILING
    return max(16, min(soft - FD_RESERVE, MAX_CONNECTIONS_CEILING))


class SettingsError(FaceprintError):
    """A ``FACEPRINT_*`` variable (or setting) holds a value the service cannot use."""


def default_home() -> Path:
    """``$FACEPRINT_HOME``, or the user data directory (the same home the CLI uses)."""
    home = os.environ.get("FACEPRINT_HOME")
    if home:
        return Path(home).expanduser()
    from platformdirs import user_data_path

    return user_data_path("faceprint", appauthor=False)


@dataclass(frozen=True)
class Settings:
    """Everything ``create_app`` needs; see docs/service.md for the variable that sets each field."""

    home: Path
    gallery: Path
    service_db: Path
    auth: bool = True
    model: str | None = None  # embedder of new collections; None: `faceprint models use`'s choice (factory)
    detector: str | None = None  # None: the model's own (its profile); else a short name or a detector model id
    device: str = "cpu"
    threads: int | None = None
    upsample: int | None = None  # detector upsampling; None: the detector's default (finds smaller faces, slower)
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    # Pixels of all images of one request together, from their headers, before any is decoded: two photos
    # at max_pixels (verify) fit; 20 photos of 40 MP in a 100 KB body (1-bit PNGs) do not (docs/service.md).
    max_request_pixels: int = 100_000_000
    # Larger photos are decoded reduced by an integer factor to at most this (phone photos, <= 12.5 MP, are not).
    decode_max_pixels: int = 16_000_000
    max_images_per_request: int = 20
    batch_max_faces: int = 32
    batch_max_wait_ms: float = 4.0
    inference_workers: int = 2
    # Admitted requests allowed to wait beyond the workers before new ones get 503 `overloaded`;
    # None: QUEUE_PER_WORKER x inference_workers (see `queue_limit`).
    max_queue: int | None = None
    metrics_public: bool = False
    default_collection: str = "default"
    trust_request_id: bool = True
    calibration: Path | None = None
    header_timeout_s: float = 10.0  # a connection's request head must be complete this long after it starts
    keepalive_timeout_s: float = 5.0  # an idle kept-alive connection is closed after this long
    max_connections: int | None = None  # None: default_max_connections() (see `connection_limit`)
    liveness: str = "off"  # liveness policy of verify/identify/enrolment when a request names none
    drift_window: int = 500  # faces per drift window (baseline and current), per collection, source and feature
    shadow: str | None = None  # embedder run in the shadow of each collection's serving model (issue 17)
    shadow_fraction: float = 0.1  # fraction of identify requests also run through the shadow model
    purge_interval_s: float = 3600.0  # expired subjects are purged (with receipts) this often; 0: never
    withdrawal_deletes_templates: bool = False  # DELETE /v1/subjects/{id}/consent also deletes the faces
    # Video (issue 16, docs/video.md): uploads to POST /v1/videos, background jobs, camera streams.
    max_video_bytes: int = 200 * 1024 * 1024
    max_video_seconds: float = 1800.0
    max_video_jobs: int = 4  # queued or running at once; one more gets 429 too_many_jobs
    video_workers: int = 1  # clips analysed at once
    max_streams: int = 4

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_pixels",
            "max_request_pixels",
            "decode_max_pixels",
            "max_images_per_request",
            "batch_max_faces",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{_ENV[name]}: must be at least 1, got {getattr(self, name)}")
        if self.inference_workers < 1:
            raise SettingsError(f"FACEPRINT_INFERENCE_WORKERS: must be at least 1, got {self.inference_workers}")
        if self.max_queue is not None and self.max_queue < 0:
            raise SettingsError(f"FACEPRINT_MAX_QUEUE: must be at least 0, got {self.max_queue}")
        if self.upsample is not None and not 0 <= self.upsample <= 3:
            raise SettingsError(f"FACEPRINT_UPSAMPLE: must be 0 to 3, got {self.upsample}")
        if self.batch_max_wait_ms < 0:
            raise SettingsError(f"FACEPRINT_BATCH_MAX_WAIT_MS: must be >= 0, got {self.batch_max_wait_ms}")
        for name in ("header_timeout_s", "keepalive_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:  # also refuses NaN
                raise SettingsError(f"{_ENV[name]}: must be above 0 and at most 3600 seconds, got {value}")
        if self.liveness not in LIVENESS_MODES:
            modes = ", ".join(LIVENESS_MODES)
            raise SettingsError(f"FACEPRINT_LIVENESS (serve --liveness): must be one of {modes}, got {self.liveness!r}")
        if self.max_connections is not None and self.max_connections < 1:
            raise SettingsError(f"FACEPRINT_MAX_CONNECTIONS: must be at least 1, got {self.max_connections}")
        if not 20 <= self.drift_window <= 100_000:
            raise SettingsError(f"FACEPRINT_DRIFT_WINDOW: must be 20 to 100000 faces, got {self.drift_window}")
        if not 0 <= self.shadow_fraction <= 1:  # also refuses NaN
            raise SettingsError(f"FACEPRINT_SHADOW_FRACTION: must be between 0 and 1, got {self.shadow_fraction}")
        if not 0 <= self.purge_interval_s <= 86400 * 7:  # also refuses NaN
            raise SettingsError(f"FACEPRINT_PURGE_INTERVAL_S: must be 0 (off) to 604800, got {self.purge_interval_s}")
        for name in ("max_video_bytes", "max_video_jobs", "video_workers", "max_streams"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{_ENV[name]}: must be at least 1, got {getattr(self, name)}")
        if not 0 < self.max_video_seconds <= 86_400:  # also refuses NaN
            raise SettingsError(
                f"FACEPRINT_MAX_VIDEO_SECONDS: must be above 0 and at most 86400, got {self.max_video_seconds}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``FACEPRINT_*`` variables; keyword ``overrides`` (CLI options) win over the environment."""
        env = os.environ if environ is None else environ
        home = Path(env["FACEPRINT_HOME"]).expanduser() if env.get("FACEPRINT_HOME") else default_home()
        home = Path(overrides.pop("home", home))
        values: dict[str, Any] = {
            "home": home,
            "gallery": Path(env.get("FACEPRINT_GALLERY") or home / "gallery").expanduser(),
            "service_db": Path(env.get("FACEPRINT_SERVICE_DB") or home / SERVICE_DB_NAME).expanduser(),
        }
        for f in fields(cls):
            var = _ENV.get(f.name)
            if var is None or var not in env or env[var] == "":
                continue
            values[f.name] = _parse(var, env[var], f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if env.get("FACEPRINT_CALIBRATION") and "calibration" not in values:
            values["calibration"] = env["FACEPRINT_CALIBRATION"]
        for key in ("gallery", "service_db", "calibration"):
            if values.get(key) is not None:
                values[key] = Path(values[key]).expanduser()
        return cls(**values)

    def pipeline_config(self, model: str | None = None) -> PipelineConfig:
        """The model choice as a pipeline configuration (``model`` overrides the service's own: a
        collection pinned to another embedder gets that embedder's whole profile, not this detector)."""
        try:
            if model is not None and model != self.model:
                return PipelineConfig(embedder=model, device=self.device, threads=self.threads)
            return PipelineConfig(
                embedder=self.model,
                detector=self.detector,
                device=self.device,
                threads=self.threads,
                upsample=self.upsample,
                calibration=self.calibration,
            )
        except ModelError as exc:
            raise SettingsError(f"FACEPRINT_MODEL/FACEPRINT_DETECTOR: {exc}") from None

    @property
    def queue_limit(self) -> int:
        """``max_queue``, or its default: a few requests per worker (docs/deploy.md explains the sizing)."""
        return QUEUE_PER_WORKER * self.inference_workers if self.max_queue is None else self.max_queue

    @property
    def connection_limit(self) -> int:
        """``max_connections``, or its default from the open-files limit (:func:`default_max_connections`)."""
        return default_max_connections() if self.max_connections is None else self.max_connections

    @property
    def drift_file(self) -> Path:
        """Where the drift windows persist: ``drift.json`` beside the service database."""
        return self.service_db.with_name("drift.json")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


_ENV = {
    "auth": "FACEPRINT_AUTH",
    "model": "FACEPRINT_MODEL",
    "detector": "FACEPRINT_DETECTOR",
    "device": "FACEPRINT_DEVICE",
    "threads": "FACEPRINT_THREADS",
    "upsample": "FACEPRINT_UPSAMPLE",
    "max_upload_bytes": "FACEPRINT_MAX_UPLOAD_BYTES",
    "max_pixels": "FACEPRINT_MAX_PIXELS",
    "max_request_pixels": "FACEPRINT_MAX_REQUEST_PIXELS",
    "decode_max_pixels": "FACEPRINT_DECODE_MAX_PIXELS",
    "max_images_per_request": "FACEPRINT_MAX_IMAGES_PER_REQUEST",
    "batch_max_faces": "FACEPRINT_BATCH_MAX_FACES",
    "batch_max_wait_ms": "FACEPRINT_BATCH_MAX_WAIT_MS",
    "inference_workers": "FACEPRINT_INFERENCE_WORKERS",
    "max_queue": "FACEPRINT_MAX_QUEUE",
    "metrics_public": "FACEPRINT_METRICS_PUBLIC",
    "default_collection": "FACEPRINT_COLLECTION",
    "trust_request_id": "FACEPRINT_TRUST_REQUEST_ID",
    "header_timeout_s": "FACEPRINT_HEADER_TIMEOUT_S",
    "keepalive_timeout_s": "FACEPRINT_KEEPALIVE_TIMEOUT_S",
    "max_connections": "FACEPRINT_MAX_CONNECTIONS",
    "liveness": "FACEPRINT_LIVENESS",
    "drift_window": "FACEPRINT_DRIFT_WINDOW",
    "shadow": "FACEPRINT_SHADOW",
    "shadow_fraction": "FACEPRINT_SHADOW_FRACTION",
    "purge_interval_s": "FACEPRINT_PURGE_INTERVAL_S",
    "withdrawal_deletes_templates": "FACEPRINT_WITHDRAWAL_DELETES_TEMPLATES",
    "max_video_bytes": "FACEPRINT_MAX_VIDEO_BYTES",
    "max_video_seconds": "FACEPRINT_MAX_VIDEO_SECONDS",
    "max_video_jobs": "FACEPRINT_MAX_VIDEO_JOBS",
    "video_workers": "FACEPRINT_VIDEO_WORKERS",
    "max_streams": "FACEPRINT_MAX_STREAMS",
}


def _parse(var: str, raw: str, kind: object) -> Any:
    text = str(kind)
    try:
        if "bool" in text:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if "int" in text:
            return int(raw)
        if "float" in text:
            return float(raw)
    except ValueError:
        expected = "true/false" if "bool" in text else ("an integer" if "int" in text else "a number")
        raise SettingsError(f"{var}: expected {expected}, got {raw!r}") from None
    return raw
