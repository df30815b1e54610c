"""Clusterings made over HTTP (``/v1/clusters``), kept in this process's memory for a while.

A clustering is stored under a random id (128 bits: the id is the capability to read, correct and name it)
with what later requests need and nothing more: the faces (ids, photo sha256, box, vector, quality), the
detections and faceprints of each photo (so naming a cluster can replay enrolment's rules without the
photo), the photo names the client gave, and one small JPEG thumbnail per face (box + 25% margin, at most
:data:`THUMB_SIZE` px) as a data URI for the UI. Photos themselves are never kept. At most
:data:`MAX_CLUSTERINGS` clusterings are held (the least recently used is dropped for a new one), each for
:data:`TTL_S` seconds after its last use; a restart forgets them all.
"""

from __future__ import annotations

import base64
import io
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image as PILImage

from faceprint.cluster import Clustering
from faceprint.errors import InvalidArgument
from faceprint.image import Image
from faceprint.liveness import LivenessResult
from faceprint.service.errors import ApiError
from faceprint.types import Detection, Faceprint

#: Clusterings held at once; a new one drops the least recently used.
MAX_CLUSTERINGS = 32
#: Seconds a clustering is kept after its last use.
TTL_S = 3600.0
#: Longest side of a face thumbnail, in pixels.
THUMB_SIZE = 96
THUMB_MARGIN = 0.25


@dataclass(frozen=True)
class Photo:
    """One uploaded photo as remembered: its name, sha256 and the faceprints found in it (no pixels)."""

    name: str
    sha256: str
    prints: tuple[Faceprint, ...]

    def stand_in(self) -> Image:
        """An :class:`Image` that names the photo and carries its sha256, with a 1×1 placeholder for pixels."""
        return Image(np.zeros((1, 1, 3), np.uint8), self.name, self.sha256)


@dataclass(frozen=True)
class StoredClustering:
    id: str
    clustering: Clustering
    photos: Mapping[str, Photo]  # by name (the faces' ``path``)
    thumbnails: Mapping[str, str]  # face id → data URI


class ClusterStore:
    """The clusterings of this process: bounded in count, each expiring :data:`TTL_S` after its last use."""

    def __init__(self, max_items: int = MAX_CLUSTERINGS, ttl_s: float = TTL_S) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, StoredClustering]] = OrderedDict()
        self._lock = threading.Lock()

    def add(
        self, clustering: Clustering, photos: Mapping[str, Photo], thumbnails: Mapping[str, str]
    ) -> StoredClustering:
        stored = StoredClustering(secrets.token_hex(16), clustering, dict(photos), dict(thumbnails))
        with self._lock:
            self._expire()
            while len(self._items) >= self.max_items:
                self._items.popitem(last=False)
            self._items[stored.id] = (time.monotonic(), stored)
        return stored

    def get(self, item_id: str) -> StoredClustering:
        with self._lock:
            self._expire()
            found = self._items.get(item_id)
            if found is None:
                raise ApiError(
                    404, "not_found", f"no clustering {item_id!r} (clusterings expire {self.ttl_s / 60:.0f} min "
                    "after their last use, and a restart forgets them): upload the photos again"
                )  # fmt: skip
            self._items[item_id] = (time.monotonic(), found[1])
            self._items.move_to_end(item_id)
            return found[1]

    def update(self, item_id: str, clustering: Clustering) -> StoredClustering:
        with self._lock:
            found = self._items.get(item_id)
            if found is None:
                raise ApiError(404, "not_found", f"no clustering {item_id!r}: it expired meanwhile")
            stored = replace(found[1], clustering=clustering)
            self._items[item_id] = (time.monotonic(), stored)
            self._items.move_to_end(item_id)
            return stored

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (used, _) in self._items.items() if now - used > self.ttl_s]:
            del self._items[key]


class ReplayPipeline:
    """What enrolment needs from a pipeline, answered from the faceprints made when clustering: the photo is
    not kept, and detecting and embedding it again would give the same faces, quality and vectors."""

    def __init__(self, model_id: str, photos: Mapping[str, Photo]) -> None:
        self._model_id = model_id
        self._by_sha = {p.sha256: p for p in photos.values()}

    @property
    def model_id(self) -> str:
        return self._model_id

    def _photo(self, image: Image) -> Photo:
        photo = self._by_sha.get(image.sha256 or "")
        if photo is None:
            raise InvalidArgument(f"{image.source}: not a photo of this clustering")
        return photo

    def detect(self, image: Image) -> list[Detection]:
        return [fp.detection for fp in self._photo(image).prints if fp.detection is not None]

    def embed(self, image: Image, detections: Sequence[Detection] | None = None) -> list[Faceprint]:
        prints = self._photo(image).prints
        if detections is None:
            return list(prints)
        by_box = {fp.detection.box: fp for fp in prints if fp.detection is not None}
        return [by_box[d.box] for d in detections]

    def chips(self, image: Image, detections: Sequence[Detection]) -> np.ndarray:
        raise InvalidArgument("the photos of a clustering are not kept: no face chips")

    def liveness(
        self,
        image: Image,
        detections: Sequence[Detection] | None = None,
        *,
        threshold: float | None = None,
        apcer: float | None = None,
    ) -> list[LivenessResult]:
        raise InvalidArgument("the photos of a clustering are not kept: liveness cannot be checked")


def thumbnail(image: Image, box: Sequence[float]) -> str:
    """A small JPEG of the face (box + 25% margin) as a ``data:`` URI."""
    x1, y1, x2, y2 = (float(v) / float(image.scale) for v in box)
    mx, my = (x2 - x1) * THUMB_MARGIN, (y2 - y1) * THUMB_MARGIN
    h, w = image.pixels.shape[:2]
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    crop = image.pixels[top : max(bottom, top + 1), left : max(right, left + 1)]
    pic = PILImage.fromarray(np.ascontiguousarray(crop))
    pic.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buf = io.BytesIO()
    pic.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
