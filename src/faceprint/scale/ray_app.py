"""The faceprint Serve application: the HTTP API (``create_app``) as the ingress, models as deployments.

Imports Ray: import this module only on the Ray path. Two ways in:

* ``faceprint serve --ray`` calls :func:`build_app` with the settings it parsed from options and env;
* a RayService (Kubernetes) or ``serve run`` uses the import path ``faceprint.scale.ray_app:app_builder``,
  which reads the same ``FACEPRINT_*`` / ``FACEPRINT_RAY_*`` variables (set them in the runtime env).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve import Application

from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.scale.backend import RayBackend
from faceprint.scale.deployments import FaceDetector, FaceEmbedder
from faceprint.scale.settings import RaySettings
from faceprint.service.app import create_app
from faceprint.service.settings import Settings

INGRESS_NAME = "FaceprintAPI"


@serve.deployment(name=INGRESS_NAME)
@serve.ingress()
class FaceprintAPI:
    """The same FastAPI app as ``faceprint serve``, built in the replica around a :class:`RayBackend`."""

    def __init__(self, detector: Any, embedder: Any, settings: Settings, config: PipelineConfig) -> None:
        self._settings = settings
        self._backend = RayBackend(detector, embedder, Pipeline(config))

    def __serve_build_asgi_app__(self) -> Any:
        # Built here, in the replica, rather than pickled from the driver: the app holds locks, a
        # Prometheus registry and (after start-up) open databases.
        return create_app(self._settings, backend=self._backend)


def build_app(settings: Settings, ray_settings: RaySettings) -> Application:
    """The bound application: ``FaceprintAPI(FaceDetector, FaceEmbedder)`` with the scaling settings."""
    rs = ray_settings
    # The model choice is resolved once, here, as everywhere (faceprint.factory): the deployments and the
    # ingress get the same concrete embedder, detector and landmark ids, whatever the replicas' model stores say.
    config = settings.pipeline_config()
    profile = config.profile
    detector = FaceDetector.options(**rs.detector.options()).bind(
        replace(config, threads=rs.detector.threads, embedder=profile.embedder, detector=profile.detector,
                landmarks=profile.landmarks)
    )  # fmt: skip
    embedder = FaceEmbedder.options(**rs.embedder.options()).bind(
        replace(config, threads=rs.embedder.threads, embedder=profile.embedder), rs.batch_max_size, rs.batch_wait_ms
    )
    pinned = replace(config, embedder=profile.embedder, detector=profile.detector, landmarks=profile.landmarks)
    return FaceprintAPI.options(**rs.ingress.options()).bind(detector, embedder, settings, pinned)


def app_builder(args: dict[str, Any] | None = None) -> Application:
    """Application builder for ``serve run`` / RayService ``import_path``; settings from the environment.

    ``args`` (the config's ``args:``) may override service settings by field name, e.g. ``{"detector":
    "hog", "gallery": "/data/gallery"}``.
    """
    overrides = dict(args or {})
    return build_app(Settings.from_env(**overrides), RaySettings.from_env())
