"""In-process vector indexes over L2-normalised vectors (score = inner product = cosine).

Two kinds behind one small interface:

- :class:`ExactIndex` — a NumPy matrix, brute-force search; exact, no build cost, cheap updates.
- :class:`HNSWIndex` — usearch HNSW; sub-linear search, approximate (recall@1 is measured in
  ``benchmarks/gallery.py``), supports removal (faiss' HNSW does not, which is one reason usearch won).

:class:`AdaptiveIndex` holds an exact index and switches to HNSW once the gallery reaches
:data:`ANN_MIN_SIZE` templates (back to exact below half of it, so a gallery near the limit does not
flip-flop). The switch size is where exact search stops being cheap — see ``docs/gallery.md``.

Indexes are caches: :func:`save_index` writes one encrypted, authenticated snapshot (AES-GCM; the header
with the collection's generation is the associated data); :func:`load_index` returns it with that
generation (the caller catches up from the change log or rebuilds from SQLite), or ``None`` when the file is
missing or unreadable.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Protocol

import numpy as np

from faceprint.gallery.crypto import TemplateCipher
from faceprint.gallery.errors import WrongKey
from faceprint.gallery.private import PRIVATE_FILE

#: Below this many templates search is exact; at or above it, HNSW. Measured in benchmarks/gallery.py on
#: this 2-core machine (CPU time per query, 128-d): exact costs ≈ 50 ns per template — 0.8 ms p95 at 10k,
#: 3.4 ms at 50k, 5.8 ms at 100k, ~84 ms at 1M — while HNSW stays at 1–2 ms with recall@1 ≥ 0.99 but needs a
#: build (~1 ms of CPU per template here) and is approximate. Below ~50k exact is cheap and always right.
ANN_MIN_SIZE = 50_000

#: HNSW parameters (usearch): graph degree, and the candidate-list sizes while building and searching.
#: Chosen at 1M × 128-d (benchmarks/gallery.py, recall@1 against exact search, CPU p95 per query, RAM):
#: degree 16 tops out at 0.976 (ef 256, 3.1 ms); degree 32 reaches 0.992 at ef 128 (3.7 ms) but needs
#: 1,065 MB; degree 24 reaches 0.990 at ef 192 (4.8 ms) in 797 MB. At 100k the same settings are exact.
#: Graphs saved with another degree keep theirs (usearch stores it); new graphs use this one.
HNSW_CONNECTIVITY = 24
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 192
#: Element type of the vectors inside the HNSW graph. f16 was measured and lost at 1M (degree 32: recall@1
#: 0.986 at 5.3 ms p95 vs 0.992 at 3.7 ms in f32 — no native f16 arithmetic on AVX2) and rounds scores.
HNSW_DTYPE = "f32"

_MAGIC = b"FPIDX1\n"


class VectorIndex(Protocol):
    kind: str

    def __len__(self) -> int: ...

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, keys: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, scores)``, each ``len(queries) × k``, best first; missing slots have key -1."""
        ...

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All ``(keys, vectors)``."""
        ...

    def to_bytes(self) -> bytes: ...


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    arr = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    if arr.shape[1] != dim:
        raise ValueError(f"expected {dim}-d vectors, got {arr.shape[1]}-d")
    return arr


class ExactIndex:
    """Brute force over a growable matrix; removal swaps the last row into the hole (O(1))."""

    kind = "exact"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._keys = np.empty(0, dtype=np.int64)
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._n = 0
        self._pos: dict[int, int] = {}

    def __len__(self) -> int:
        return self._n

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64).ravel()
        vectors = _as_matrix(vectors, self.dim)
        need = self._n + len(keys)
        if need > len(self._keys):
            capacity = max(need, 2 * len(self._keys), 256)
            grown_k = np.empty(capacity, dtype=np.int64)
            grown_v = np.empty((capacity, self.dim), dtype=np.float32)
            grown_k[: self._n] = self._keys[: self._n]
            grown_v[: self._n] = self._vectors[: self._n]
            self._keys, self._vectors = grown_k, grown_v
        for key, vec in zip(keys.tolist(), vectors, strict=True):
            if key in self._pos:  # re-adding a key replaces its vector
                self._vectors[self._pos[key]] = vec
                continue
            self._keys[self._n] = key
            self._vectors[self._n] = vec
            self._pos[key] = self._n
            self._n += 1

    def remove(self, keys: np.ndarray) -> None:
        for key in np.asarray(keys, dtype=np.int64).ravel().tolist():
            pos = self._pos.pop(key, None)
            if pos is None:
                continue
            last = self._n - 1
            if pos != last:
                moved = int(self._keys[last])
                self._keys[pos] = moved
                self._vectors[pos] = self._vectors[last]
                self._pos[moved] = pos
            self._n = last

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_matrix(queries, self.dim)
        keys = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        if self._n == 0 or k <= 0:
            return keys, scores
        # einsum, not `@`: a 1×N product through multi-threaded OpenBLAS costs ~30 ms of thread hand-off on a
        # busy 2-core machine (measured), while this single-threaded loop scans 100k × 128 in ~4 ms of CPU.
        sims = np.einsum("qd,nd->qn", q, self._vectors[: self._n])  # Q×N
        take = min(k, self._n)
        if take < self._n:
            part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        else:
            part = np.broadcast_to(np.arange(self._n), (len(q), self._n))
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1)
        keys[:, :take] = self._keys[best]
        scores[:, :take] = np.take_along_axis(part_scores, order, axis=1)
        return keys, scores

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        return self._keys[: self._n].copy(), self._vectors[: self._n].copy()

    def to_bytes(self) -> bytes:
        keys, vectors = self.items()
        return struct.pack("<Q", len(keys)) + keys.astype("<i8").tobytes() + vectors.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> ExactIndex:
        (n,) = struct.unpack_from("<Q", data)
        keys = np.frombuffer(data, dtype="<i8", count=n, offset=8)
        vectors = np.frombuffer(data, dtype="<f4", count=n * dim, offset=8 + 8 * n).reshape(n, dim)
        index = cls(dim)
        index.add(keys, vectors)
        return index


class HNSWIndex:
    """usearch HNSW over inner product (vectors are normalised, so this is cosine)."""

    kind = "hnsw"

    def __init__(self, dim: int, *, expansion_search: int = HNSW_EXPANSION_SEARCH) -> None:
        from usearch.index import Index  # imported here: the exact path needs no native library

        self.dim = dim
        self._index = Index(
            ndim=dim,
            metric="ip",
            dtype=HNSW_DTYPE,
            connectivity=HNSW_CONNECTIVITY,
            expansion_add=HNSW_EXPANSION_ADD,
            expansion_search=expansion_search,
        )

    def __len__(self) -> int:
        return len(self._index)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.uint64).ravel()
        vectors = _as_matrix(vectors, self.dim)
        present = np.array([self._index.contains(int(k)) for k in keys], dtype=bool) if len(self) else None
        if present is not None and present.any():
            self._index.remove(keys[present])
        self._index.add(keys, vectors)

    def remove(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.uint64).ravel()
        if len(keys):
            self._index.remove(keys)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_matrix(queries, self.dim)
        keys = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        if len(self) == 0 or k <= 0:
            return keys, scores
        found = self._index.search(q, k)
        if len(q) == 1:  # usearch answers a single query with a flat Matches
            rows = [(np.asarray(found.keys), np.asarray(found.distances))]
        else:
            rows = [(found.keys[i, : found.counts[i]], found.distances[i, : found.counts[i]]) for i in range(len(q))]
        for row, (got_keys, got_dist) in enumerate(rows):
            n = len(got_keys)
            keys[row, :n] = got_keys.astype(np.int64)
            scores[row, :n] = 1.0 - got_dist  # usearch "ip" distance is 1 - inner product
        return keys, scores

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.asarray(self._index.keys, dtype=np.uint64)
        if len(keys) == 0:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        vectors = np.asarray(self._index.get(keys), dtype=np.float32).reshape(len(keys), self.dim)
        return keys.astype(np.int64), vectors

    def to_bytes(self) -> bytes:
        return bytes(self._index.save())

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> HNSWIndex:
        from usearch.index import Index

        index = cls(dim)
        index._index = Index.restore(bytearray(data))
        if index._index is None or index._index.ndim != dim:
            raise ValueError("not a usearch index of the expected dimension")
        index._index.expansion_search = HNSW_EXPANSION_SEARCH
        return index


class AdaptiveIndex:
    """Exact below :data:`ANN_MIN_SIZE`, HNSW at or above it (with hysteresis on the way down)."""

    def __init__(self, dim: int, *, ann_min_size: int = ANN_MIN_SIZE) -> None:
        self.dim = dim
        self.ann_min_size = ann_min_size
        self.inner: ExactIndex | HNSWIndex = ExactIndex(dim)

    @property
    def kind(self) -> str:
        return self.inner.kind

    def __len__(self) -> int:
        return len(self.inner)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.inner.add(keys, vectors)
        if isinstance(self.inner, ExactIndex) and len(self.inner) >= self.ann_min_size:
            self._switch(HNSWIndex(self.dim))

    def remove(self, keys: np.ndarray) -> None:
        self.inner.remove(keys)
        if isinstance(self.inner, HNSWIndex) and len(self.inner) < self.ann_min_size // 2:
            self._switch(ExactIndex(self.dim))

    def _switch(self, target: ExactIndex | HNSWIndex) -> None:
        keys, vectors = self.inner.items()
        target.add(keys, vectors)
        self.inner = target

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.search(queries, k)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.items()

    def to_bytes(self) -> bytes:
        return self.inner.to_bytes()

    @classmethod
    def build(
        cls, dim: int, keys: np.ndarray, vectors: np.ndarray, *, ann_min_size: int = ANN_MIN_SIZE
    ) -> AdaptiveIndex:
        index = cls(dim, ann_min_size=ann_min_size)
        if len(keys) >= ann_min_size:
            index.inner = HNSWIndex(dim)
        index.inner.add(keys, vectors)
        return index


def save_index(path: Path, index: AdaptiveIndex, *, generation: int, cipher: TemplateCipher) -> None:
    """Write an encrypted snapshot atomically (temp file + fsync + rename): readers see old or new."""
    header = json.dumps(
        {"kind": index.kind, "dim": index.dim, "generation": generation, "count": len(index), "key_id": cipher.key_id},
        sort_keys=True,
    ).encode()
    body = cipher.encrypt(index.to_bytes(), _MAGIC + header)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)  # the snapshot holds templates: private whatever the umask
    with open(fd, "wb") as fh:
        fh.write(_MAGIC + struct.pack("<I", len(header)) + header + body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_index(
    path: Path, *, dim: int, cipher: TemplateCipher, ann_min_size: int = ANN_MIN_SIZE
) -> tuple[AdaptiveIndex, int] | None:
    """The snapshot at ``path`` and the generation it was saved at, or ``None`` if missing or unusable."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        return None
    (size,) = struct.unpack_from("<I", data, len(_MAGIC))
    start = len(_MAGIC) + 4
    header_bytes = data[start : start + size]
    try:
        header = json.loads(header_bytes)
    except ValueError:
        return None
    if (
        header.get("dim") != dim
        or header.get("key_id") != cipher.key_id
        or not isinstance(header.get("generation"), int)
    ):
        return None
    try:
        body = cipher.decrypt(data[start + size :], _MAGIC + header_bytes)
    except WrongKey:
        return None
    index = AdaptiveIndex(dim, ann_min_size=ann_min_size)
    try:
        index.inner = HNSWIndex.from_bytes(body, dim) if header["kind"] == "hnsw" else ExactIndex.from_bytes(body, dim)
    except (ValueError, RuntimeError, struct.error):
        return None
    return (index, header["generation"]) if len(index) == header.get("count") else None
