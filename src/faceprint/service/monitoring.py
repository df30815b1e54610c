"""What the service records for operators beyond requests and latency: input drift per collection and source
(:mod:`faceprint.evaluation.drift`), and which model version serves or shadows each collection.

Requests name their source (a camera id) in the ``source`` field or the ``X-Faceprint-Source`` header; the
drift gauges (``faceprint_drift_*``) and ``faceprint_model_info`` are computed when ``/metrics`` is scraped,
so requests pay only for appending a few numbers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from fastapi import Request

from faceprint.evaluation.drift import DriftError, DriftMonitor, Observation, check_source
from faceprint.gallery import Collection, Identification
from faceprint.liveness import LivenessResult
from faceprint.service.canary import SEPARATOR, ServingTable, shadow_collection
from faceprint.service.engines import Engines
from faceprint.service.errors import ApiError
from faceprint.service.metrics import Metrics
from faceprint.types import Detection, Faceprint

log = logging.getLogger("faceprint.service")

SOURCE_HEADER = "X-Faceprint-Source"
SAVE_EVERY_S = 10.0  # the drift windows are written at most this often (and at shutdown)


def request_source(request: Request, field: str | None) -> str:
    """The request's source: its ``source`` field, else the ``X-Faceprint-Source`` header, else ``default``."""
    try:
        return check_source(field if field is not None else request.headers.get(SOURCE_HEADER))
    except DriftError as exc:
        raise ApiError(422, "validation_error", f"{SOURCE_HEADER}: {exc}", field="source") from None


def face_observations(
    detections: Sequence[Detection],
    prints: Sequence[Faceprint | None],
    checks: Sequence[LivenessResult | None],
    answers: Sequence[Identification | None] = (),
) -> list[Observation]:
    """One observation per face; ``prints``/``answers`` hold None for a face that was not embedded/searched."""
    out = []
    for i, det in enumerate(detections):
        fp = prints[i] if i < len(prints) else None
        answer = answers[i] if i < len(answers) else None
        check = checks[i] if i < len(checks) else None
        quality = fp.extra.get("quality") if fp is not None else None
        out.append(
            Observation(
                face_size=float(det.width),
                quality=None if fp is None else fp.quality,
                sharpness=None if quality is None else float(quality.sharpness),
                liveness=None if check is None else float(check.score),
                best_score=float(answer.candidates[0].score) if answer is not None and answer.candidates else None,
            )
        )
    return out


class DriftRecorder:
    """The service's :class:`DriftMonitor`, saved now and then off the event loop."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor
        self._saved_at = time.monotonic()
        self._lock = threading.Lock()

    def record(self, collection: str, source: str, observations: Sequence[Observation]) -> bool:
        """Add the observations; True (for one caller at a time) when the windows are due to be saved: that
        caller then calls :meth:`save` off the event loop."""
        self.monitor.observe(collection, source, observations)
        with self._lock:
            if time.monotonic() - self._saved_at < SAVE_EVERY_S:
                return False
            self._saved_at = time.monotonic()  # claimed: other requests do not save too
            return True

    def save(self) -> None:
        try:
            self.monitor.save(force=False)
        except OSError as exc:  # a full disk must not fail requests; the next save tries again
            log.warning("could not save the drift windows to %s: %s", self.monitor.path, exc)

    def export(self, metrics: Metrics) -> None:
        for collection, source in self.monitor.streams():
            for c in self.monitor.compare(collection, source):
                labels = (collection, source, c.feature)
                metrics.drift_psi.labels(*labels).set(c.psi)
                metrics.drift_ks_statistic.labels(*labels).set(c.ks_statistic)
                metrics.drift_ks_pvalue.labels(*labels).set(c.ks_pvalue)


def export_model_info(
    metrics: Metrics, collections: Sequence[Collection], engines: Engines, serving: ServingTable, shadow: str | None
) -> None:
    """``faceprint_model_info``: for each collection clients use, the model answering it and its shadow."""
    by_name = {c.name: c for c in collections}
    metrics.model_info.clear()
    for coll in collections:
        if SEPARATOR in coll.name:
            continue  # a shadow copy: reported under the collection it copies
        target = by_name.get(serving.resolve(coll.name), coll)
        metrics.model_info.labels(coll.name, target.model_id, _sha(engines, target.model_id), "serving").set(1)
        if shadow is None:
            continue
        other = by_name.get(shadow_collection(coll.name, shadow) if target.name == coll.name else coll.name)
        if other is not None:
            metrics.model_info.labels(coll.name, other.model_id, _sha(engines, other.model_id), "shadow").set(1)


def _sha(engines: Engines, model_id: str) -> str:
    return engines.sha256(model_id) or ""
