"""Every model the service serves: one engine per embedder, and which engine each collection uses.

A gallery collection is pinned to the embedder it was created with, so one service may need several models
at once: the one new collections get (``--model``/``FACEPRINT_MODEL``, default ``faceprint models use``'s
choice) and the model of every existing collection. Each model is loaded once, with its whole profile
(detector, landmarks, calibration table: :mod:`faceprint.factory`). A collection whose model cannot be loaded
here (not installed, or not served by a remote backend) is refused with a message that says why and what to
do, while every other collection is served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from faceprint.errors import FaceprintError
from faceprint.gallery import Collection, CollectionNotFound, Gallery
from faceprint.matching import Calibration
from faceprint.pipeline import Pipeline
from faceprint.service.backends import InferenceBackend
from faceprint.service.errors import ApiError

log = logging.getLogger("faceprint.service")


@dataclass(frozen=True)
class Engine:
    """One model profile in service: its pipeline (chips, quality policy, calibration) and the backend its
    networks run on (this process, or Ray Serve deployments)."""

    pipeline: Pipeline
    backend: InferenceBackend
    calibration: Calibration | None  # None: no table, so requests must give an explicit threshold

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def dim(self) -> int:
        return int(self.backend.dim)

    @property
    def sha256(self) -> str:
        """The sha256 of the embedder's weights: the model version every decision is traced to."""
        return self.pipeline.spec.sha256

    def describe(self) -> dict[str, object]:
        profile = self.pipeline.profile
        return {
            "model_id": self.model_id,
            "dim": self.dim,
            "detector": profile.detector,
            "landmarks": profile.landmarks,
            "calibrated": self.calibration is not None,
        }


EngineFactory = Callable[[str], Engine]


class Engines:
    """The default engine plus one per other model that a collection is pinned to.

    ``load(model_id)`` builds (and starts) a new engine; ``None`` means this service cannot load other
    models (a remote backend serves one model only), so their collections are refused.
    """

    def __init__(self, default: Engine, load: EngineFactory | None) -> None:
        self.default = default
        self._load = load
        self._by_model: dict[str, Engine] = {default.model_id: default}
        self._refused: dict[str, str] = {}  # model id → why it cannot be served
        self._lock = threading.Lock()

    # -- start-up ------------------------------------------------------------------------------------------
    def serve_collections(self, collections: Iterable[Collection]) -> None:
        """Load the model of every collection now (so the first request does not pay for it); a model that
        cannot load is recorded and its collections answer 503 ``model_unavailable``."""
        for coll in collections:
            try:
                self.for_model(coll.model_id)
            except ApiError:
                log.warning("collection %r is not served: %s", coll.name, self._refused[coll.model_id])

    def for_model(self, model_id: str) -> Engine:
        with self._lock:
            engine = self._by_model.get(model_id)
            if engine is not None:
                return engine
            if model_id not in self._refused:
                self._refused[model_id] = self._try_load(model_id)
            reason = self._refused[model_id]
            if not reason:  # loaded
                return self._by_model[model_id]
        raise ApiError(503, "model_unavailable", reason, model=model_id)

    def _try_load(self, model_id: str) -> str:
        """'' when ``model_id`` is now loaded, else the reason it cannot be."""
        if self._load is None:
            return (
                f"model {model_id!r} is not served here: this deployment runs {self.default.model_id} only "
                f"(start one for {model_id}, or migrate the collection with `faceprint migrate --to "
                f"{self.default.model_id}`)"
            )
        try:
            engine = self._load(model_id)
        except FaceprintError as exc:
            return f"model {model_id!r} cannot be loaded: {exc}"
        self._by_model[model_id] = engine
        return ""

    # -- per request ---------------------------------------------------------------------------------------
    def for_collection(self, gallery: Gallery, name: str) -> Engine:
        """The engine of collection ``name``; the default engine for a collection that does not exist yet
        (the gallery call then creates it with the default model, or answers 404)."""
        try:
            coll = gallery.get_collection(name)
        except CollectionNotFound:
            return self.default
        return self.for_model(coll.model_id)

    # -- reporting and shutdown ----------------------------------------------------------------------------
    @property
    def loaded(self) -> list[Engine]:
        with self._lock:
            return list(self._by_model.values())

    def sha256(self, model_id: str) -> str | None:
        """The weights' sha256 of a loaded model; None for one not loaded here."""
        with self._lock:
            engine = self._by_model.get(model_id)
        return None if engine is None else engine.sha256

    def refused(self) -> dict[str, str]:
        with self._lock:
            return {model: why for model, why in self._refused.items() if why}

    def close(self) -> None:
        for engine in self.loaded:
            try:
                engine.backend.close()
            except Exception:  # shutting down: report, keep closing the rest
                log.exception("closing the %s engine failed", engine.model_id)
