"""The service's inference backend on Ray Serve: detection and embedding through deployment handles.

It implements :class:`faceprint.service.backends.InferenceBackend`, so ``create_app`` serves the same API
and UI whether the models run in-process or on a Ray cluster. What stays in the HTTP process is cheap and
needs no model: decoding (done by the service before this is called), chip alignment from the landmarks the
detector returned, and the quality measures of each chip. Only chips travel to the embedder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from faceprint.image import Image
from faceprint.pipeline import Pipeline
from faceprint.quality import assess
from faceprint.tracing import inject, span
from faceprint.types import Detection, Faceprint


class RayBackend:
    """Detector and embedder as Ray Serve deployment handles (``DeploymentHandle``).

    ``detect``/``embed_sync`` block their thread (the service calls them from worker threads); ``embed``
    awaits on the event loop. ``pipeline`` is a model-less :class:`Pipeline` used for its chip template and
    quality policy only: nothing in this process loads a network.
    """

    def __init__(self, detector: Any, embedder: Any, pipeline: Pipeline) -> None:
        self._detector = detector
        self._embedder = embedder
        self._pipeline = pipeline
        self.dim = 0

    @property
    def model_id(self) -> str:
        return self._pipeline.model_id

    def start(self) -> None:
        """Wait for both deployments to answer (``/readyz`` then means the models are reachable)."""
        info = self._embedder.info.remote().result()
        self.dim = int(info["dim"])
        self._detector.info.remote().result()

    def close(self) -> None:
        """Nothing to release here: the deployments belong to the Serve application."""

    def detect(self, image: Image) -> list[Detection]:
        # The W3C trace context travels with the call: the replica's spans join this request's trace.
        return list(self._detector.detect.remote(image, inject()).result())

    async def embed(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        if not detections:
            return []
        chips = await asyncio.to_thread(self._pipeline.chips, image, detections)
        with span("embed", faces=len(detections), remote=True):  # batched across requests by the replica
            vectors = await self._embedder.embed.remote(chips)
        return await asyncio.to_thread(self._assemble, detections, chips, vectors)

    def embed_sync(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        if not detections:
            return []
        chips = self._pipeline.chips(image, detections)
        with span("embed", faces=len(detections), remote=True):
            vectors = self._embedder.embed.remote(chips).result()
        return self._assemble(detections, chips, vectors)

    def _assemble(self, detections: Sequence[Detection], chips: np.ndarray, vectors: np.ndarray) -> list[Faceprint]:
        """Faceprints as :meth:`Pipeline.embed_batch` makes them: vector, detection, quality."""
        policy = self._pipeline.config.quality
        out = []
        for det, chip, vector in zip(detections, chips, vectors, strict=True):
            q = assess(det, chip, policy)
            out.append(
                Faceprint(vector=vector, model_id=self.model_id, detection=det, quality=q.score, extra={"quality": q})
            )
        return out
