"""The Ray Serve deployments that hold the models: a face detector and a batched embedder.

Imports Ray: import this module only on the Ray path. The detector takes a decoded image and returns its
detections with landmarks; the embedder takes aligned chips (150×150 RGB, aligned by the caller, so only
~67 KB per face crosses the network instead of the whole photo) and returns one vector per chip.
Requests from any number of HTTP replicas are merged into one network pass by ``@serve.batch``.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from faceprint.image import Image
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.tracing import configure_from_env, enabled, extract, resume
from faceprint.types import Detection

DETECTOR_NAME = "FaceDetector"
EMBEDDER_NAME = "FaceEmbedder"


@serve.deployment(name=DETECTOR_NAME)
class FaceDetector:
    """``detect(image, trace) -> [Detection]`` (boxes, scores, 5 landmarks), the detector of
    ``Pipeline.detect``; its detect and landmarks spans join the caller's trace."""

    def __init__(self, config: PipelineConfig) -> None:
        if not enabled():  # a replica exports its own spans where the service's environment asks for it
            configure_from_env("faceprint-ray")
        # The whole profile, not just the detector: the embedder decides which landmarks the chips need.
        self.pipeline = Pipeline(config)
        # Load now: a replica counts as started (and autoscaling as done) only once it can answer.
        self.pipeline.detect(np.full((160, 160, 3), 128, dtype=np.uint8))
        _ = self.pipeline.landmarker

    def detect(self, image: Image, trace: dict[str, str] | None = None) -> list[Detection]:
        """``trace``: the caller's W3C trace context (:func:`faceprint.tracing.inject`), continued here."""
        with resume(extract(trace)):
            return self.pipeline.detect(image)

    def info(self) -> dict[str, object]:
        return {"detector": self.pipeline.detector_name, "landmarks": self.pipeline.landmarker_id}


@serve.deployment(name=EMBEDDER_NAME)
class FaceEmbedder:
    """``embed(chips) -> vectors``: calls arriving together are merged into one batched network pass."""

    def __init__(self, config: PipelineConfig, batch_max_size: int, batch_wait_ms: float) -> None:
        self.pipeline = Pipeline(config)
        self.model = self.pipeline.embedder
        self.model.embed_chips(np.zeros((1, self.model.chip_size, self.model.chip_size, 3), dtype=np.uint8))
        self.embed.set_max_batch_size(batch_max_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        self.batches = 0  # network passes run …
        self.requests = 0  # … for this many embed calls: their ratio is the batching achieved

    def info(self) -> dict[str, object]:
        return {
            "model": self.model.model_id,
            "dim": int(self.model.dim),
            "chip_size": int(self.model.chip_size),
            "batches": self.batches,
            "requests": self.requests,
        }

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.004)
    async def embed(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        """Each request is an (n, 150, 150, 3) array of one image's chips; answers keep the request order."""
        counts = [len(chips) for chips in requests]
        batch = np.concatenate([c for c in requests if len(c)], axis=0) if sum(counts) else None
        if batch is None:
            return [np.zeros((0, int(self.model.dim)), dtype=np.float32) for _ in requests]
        # In a thread: the replica's event loop keeps accepting (and batching) requests while the net runs.
        vectors = await asyncio.to_thread(self.pipeline.embed_chips, batch)  # with the profile's mirror
        self.batches += 1
        self.requests += len(requests)
        out: list[np.ndarray] = []
        start = 0
        for n in counts:
            out.append(vectors[start : start + n])
            start += n
        return out
