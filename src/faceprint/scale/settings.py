"""Ray Serve settings: replicas, autoscaling and batching of the detector and embedder deployments.

Read from ``FACEPRINT_RAY_*`` variables (or given directly), validated at start-up like the service's own
settings: a bad value is refused with the variable's name, never replaced by a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from faceprint.service.settings import SettingsError


@dataclass(frozen=True)
class DeploymentScaling:
    """Autoscaling and resources of one deployment (Ray Serve's ``autoscaling_config`` and actor options)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 8
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def check(self, prefix: str) -> None:
        if self.min_replicas < 0:
            raise SettingsError(f"{prefix}_MIN_REPLICAS: must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise SettingsError(
                f"{prefix}_MAX_REPLICAS: must be >= 1 and >= the minimum ({self.min_replicas}), got {self.max_replicas}"
            )
        if self.target_ongoing_requests <= 0:
            raise SettingsError(f"{prefix}_TARGET_ONGOING_REQUESTS: must be > 0, got {self.target_ongoing_requests}")
        if self.max_ongoing_requests < 1:
            raise SettingsError(f"{prefix}_MAX_ONGOING_REQUESTS: must be >= 1, got {self.max_ongoing_requests}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise SettingsError(f"{prefix}_NUM_CPUS/_NUM_GPUS: must be >= 0")

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }

    @property
    def threads(self) -> int:
        """ONNX Runtime threads per replica: its CPU share, so replicas do not oversubscribe the node."""
        return max(1, round(self.num_cpus))


@dataclass(frozen=True)
class RaySettings:
    """Where the Ray cluster is and how the faceprint application is laid out on it."""

    address: str | None = None  # None: start a local Ray instance; "auto": join the node's running cluster
    num_cpus: int | None = None  # CPUs of a local instance (None: Ray counts them); ignored with an address
    app_name: str = "faceprint"
    detector: DeploymentScaling = DeploymentScaling(max_replicas=2, target_ongoing_requests=2, max_ongoing_requests=4)
    embedder: DeploymentScaling = DeploymentScaling(max_replicas=2, target_ongoing_requests=16, max_ongoing_requests=64)
    # The HTTP API itself: decoding, alignment, gallery search and the audit log (no models).
    ingress: DeploymentScaling = DeploymentScaling(num_cpus=0.5, target_ongoing_requests=16, max_ongoing_requests=64)
    batch_max_size: int = 32  # requests per embedder batch (@serve.batch)
    batch_wait_ms: float = 4.0  # how long the first request of a batch waits for company

    def __post_init__(self) -> None:
        self.detector.check("FACEPRINT_RAY_DETECTOR")
        self.embedder.check("FACEPRINT_RAY_EMBEDDER")
        self.ingress.check("FACEPRINT_RAY_INGRESS")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise SettingsError(f"FACEPRINT_RAY_NUM_CPUS: must be >= 1, got {self.num_cpus}")
        if self.batch_max_size < 1:
            raise SettingsError(f"FACEPRINT_RAY_BATCH_MAX_SIZE: must be >= 1, got {self.batch_max_size}")
        if self.batch_wait_ms < 0:
            raise SettingsError(f"FACEPRINT_RAY_BATCH_WAIT_MS: must be >= 0, got {self.batch_wait_ms}")
        if self.embedder.max_ongoing_requests < self.batch_max_size:
            raise SettingsError(
                "FACEPRINT_RAY_EMBEDDER_MAX_ONGOING_REQUESTS must be >= FACEPRINT_RAY_BATCH_MAX_SIZE, or batches "
                f"can never fill ({self.embedder.max_ongoing_requests} < {self.batch_max_size})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RaySettings:
        """``FACEPRINT_RAY_*`` variables, e.g. ``FACEPRINT_RAY_EMBEDDER_MAX_REPLICAS=8``; overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("FACEPRINT_RAY_ADDRESS"):
            values["address"] = env["FACEPRINT_RAY_ADDRESS"]
        for name in ("num_cpus", "batch_max_size", "batch_wait_ms"):
            var = f"FACEPRINT_RAY_{name.upper()}"
            if env.get(var):
                values[name] = _number(var, env[var], float if name == "batch_wait_ms" else int)
        for part in ("detector", "embedder", "ingress"):
            base: DeploymentScaling = getattr(cls, part)
            changes: dict[str, Any] = {}
            for f in fields(DeploymentScaling):
                var = f"FACEPRINT_RAY_{part.upper()}_{f.name.upper()}"
                if env.get(var):
                    changes[f.name] = _number(var, env[var], type(getattr(base, f.name)))
            if changes:
                values[part] = replace(base, **changes)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _number(var: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{var}: expected {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
