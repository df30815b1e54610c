"""Group faces into people: agglomerative clustering on cosine distance, thresholded in calibration terms,
with cannot-links (two faces of one photo; feedback) and must-links (feedback) enforced on the result.

The algorithm (chosen by measurement, see ``docs/clustering.md``): average-linkage agglomerative clustering
(scikit-learn) stopped at the distance ``1 - threshold``, where ``threshold`` is the model's score at a target
false-match rate (``Calibration.threshold_for``) or an explicit score. Up to :data:`MAX_DENSE` faces the
distances are one N×N matrix; above it, average linkage runs on group sum vectors with merges restricted to
a k-nearest-neighbour graph (the gallery's HNSW index), so memory stays O(N·(k + D)).

scikit-learn (and SciPy) are imported on the first clustering, not with this module: they take ~1 s and
``faceprint`` (hence ``faceprint --help``) imports this package to export :func:`cluster`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from faceprint.errors import InvalidArgument
from faceprint.gallery.index import ExactIndex, HNSWIndex
from faceprint.matching import Calibration, ThresholdRule, normalise
from faceprint.types import Faceprint

if TYPE_CHECKING:
    from scipy import sparse

#: Largest number of faces clustered from one dense N×N distance matrix (float32: 400 MB at 10k, plus
#: scikit-learn's condensed float64 copy). Above it the sparse k-nearest-neighbour path runs.
MAX_DENSE = 10_000
#: Neighbours per face in the sparse path's graph.
SPARSE_NEIGHBOURS = 30
#: Distance given to cannot-linked pairs before clustering (cosine distances are ≤ 2): average linkage then
#: needs hundreds of close pairs to outweigh one; whatever still merges is split afterwards.
CANNOT_LINK_DISTANCE = 100.0
METHODS = ("average", "complete", "hdbscan")
DEFAULT_METHOD = "average"


@dataclass(frozen=True)
class Face:
    """One face to cluster. ``id`` is stable across reruns: the photo's sha256 and the rounded box."""

    id: str
    image: str  # sha256 of the photo's bytes (faces of one photo are never one person)
    vector: np.ndarray
    path: str | None = None
    box: tuple[float, float, float, float] | None = None
    quality: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "image": self.image,
            "path": self.path,
            "box": None if self.box is None else [round(float(v), 1) for v in self.box],
            "quality": None if self.quality is None else round(float(self.quality), 3),
        }


def face_id(image_sha256: str, box: Sequence[float] | None) -> str:
    if box is None:
        return image_sha256
    return f"{image_sha256}@{','.join(str(round(float(v))) for v in box)}"


def as_faces(items: Sequence[Faceprint | Face], images: Sequence[str] | None = None) -> list[Face]:
    """Faces from faceprints: ``images[i]`` (or ``faceprint.extra["image"]``) names the photo of each; a
    faceprint with neither is its own photo (no cannot-link)."""
    if images is not None and len(images) != len(items):
        raise InvalidArgument(f"images has {len(images)} entries for {len(items)} faceprints")
    out: list[Face] = []
    for i, item in enumerate(items):
        if isinstance(item, Face):
            out.append(item)
            continue
        image = images[i] if images is not None else str(item.extra.get("image") or f"face-{i}")
        box = None if item.detection is None else tuple(float(v) for v in item.detection.box)
        out.append(
            Face(
                face_id(image, box),
                image,
                np.asarray(item.vector, np.float32),
                path=item.extra.get("path"),
                box=box,  # type: ignore[arg-type]
                quality=item.quality,
            )
        )
    ids = [f.id for f in out]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("two faces share an id (same photo and box): pass each face once")
    return out


@dataclass(frozen=True)
class Constraints:
    """Pairs of face ids: ``must`` be one person, ``cannot`` be one person (feedback; faces of one photo are
    cannot-linked implicitly). The latest feedback about a pair wins (see :meth:`add`)."""

    must: tuple[tuple[str, str], ...] = ()
    cannot: tuple[tuple[str, str], ...] = ()

    def add(self, *, must: Iterable[tuple[str, str]] = (), cannot: Iterable[tuple[str, str]] = ()) -> Constraints:
        new_must = {_pair(a, b) for a, b in must if a != b}
        new_cannot = {_pair(a, b) for a, b in cannot if a != b}
        kept_must = [p for p in self.must if p not in new_cannot and p not in new_must]
        kept_cannot = [p for p in self.cannot if p not in new_must and p not in new_cannot]
        return Constraints(tuple(kept_must + sorted(new_must)), tuple(kept_cannot + sorted(new_cannot)))

    def to_dict(self) -> dict[str, list[list[str]]]:
        return {"must_link": [list(p) for p in self.must], "cannot_link": [list(p) for p in self.cannot]}

    @classmethod
    def from_dict(cls, data: dict) -> Constraints:
        return cls(
            tuple(_pair(a, b) for a, b in data.get("must_link", ())),
            tuple(_pair(a, b) for a, b in data.get("cannot_link", ())),
        )


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class Cluster:
    """One person: ``members`` are indices into :attr:`Clustering.faces`, most central first."""

    id: int
    members: tuple[int, ...]
    representative: int  # the member nearest the centroid
    cohesion: float  # mean cosine similarity of the members to their (normalised) centroid
    centroid: np.ndarray = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class Clustering:
    """Clusters (largest first, ids 1…K), outliers (faces in no cluster), and how it was made."""

    faces: tuple[Face, ...]
    labels: np.ndarray  # per face: cluster id, or 0 for an outlier
    clusters: tuple[Cluster, ...]
    threshold: float
    rule: str  # "FMR 1.0e-03" or "explicit threshold"
    model_id: str
    method: str
    min_faces: int
    constraints: Constraints = Constraints()

    @property
    def outliers(self) -> list[int]:
        return np.nonzero(self.labels == 0)[0].tolist()

    def cluster(self, cluster_id: int) -> Cluster:
        for c in self.clusters:
            if c.id == cluster_id:
                return c
        raise InvalidArgument(f"no cluster {cluster_id} (clusters are 1…{len(self.clusters)})")

    def index_of(self, face: str) -> int:
        for i, f in enumerate(self.faces):
            if f.id == face:
                return i
        raise InvalidArgument(f"no face {face!r} in this clustering")

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model_id,
            "method": self.method,
            "threshold": round(self.threshold, 6),
            "rule": self.rule,
            "min_faces": self.min_faces,
            "faces": len(self.faces),
            "clusters": [
                {
                    "id": c.id,
                    "size": c.size,
                    "cohesion": round(c.cohesion, 4),
                    "representative": self.faces[c.representative].id,
                    "faces": [self.faces[i].id for i in c.members],
                }
                for c in self.clusters
            ],
            "outliers": [self.faces[i].id for i in self.outliers],
            "constraints": self.constraints.to_dict(),
        }


def choose_threshold(
    model_id: str,
    *,
    fmr: float | None = None,
    threshold: float | None = None,
    calibration: Calibration | None = None,
) -> ThresholdRule:
    """The clustering threshold: the model's score at ``fmr`` (default 1e-3) or an explicit score."""
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise InvalidArgument(f"threshold is a cosine score in [-1, 1], got {threshold}")
    return ThresholdRule.choose(model_id, fmr=fmr, threshold=threshold, calibration=calibration)


def cluster(
    faceprints: Sequence[Faceprint | Face],
    *,
    images: Sequence[str] | None = None,
    fmr: float | None = None,
    threshold: float | None = None,
    min_faces: int = 2,
    constraints: Constraints | None = None,
    method: str = DEFAULT_METHOD,
    model_id: str | None = None,
    calibration: Calibration | None = None,
) -> Clustering:
    """Group ``faceprints`` into people (see the module docstring).

    ``images``: the photo of each faceprint (else ``faceprint.extra["image"]``), for the cannot-link between
    faces of one photo. The threshold follows at most one of ``fmr`` (default 1e-3 on the model's calibration
    table) and ``threshold`` (a cosine score). Groups of fewer than ``min_faces`` faces are outliers.
    ``constraints`` (feedback) are enforced on the result.
    """
    faces = as_faces(faceprints, images)
    if method not in METHODS:
        raise InvalidArgument(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if min_faces < 1:
        raise InvalidArgument(f"min_faces must be at least 1, got {min_faces}")
    models = {fp.model_id for fp in faceprints if isinstance(fp, Faceprint)}
    if len(models) > 1:
        raise InvalidArgument(f"faceprints from several models cannot be clustered together: {sorted(models)}")
    model = model_id or (models.pop() if models else None)
    if model is None:
        raise InvalidArgument("model_id is needed to cluster Face records (it chooses the calibration table)")
    rule = choose_threshold(model, fmr=fmr, threshold=threshold, calibration=calibration)
    constraints = constraints or Constraints()
    if not faces:
        return _finish(faces, np.zeros(0, np.int64), rule, model, method, min_faces, constraints)
    if len({f.vector.shape[0] for f in faces}) > 1:
        raise InvalidArgument("faces of different dimension cannot be clustered together")
    vectors = normalise(np.vstack([f.vector for f in faces]))
    cannot = _cannot_pairs(faces, constraints)
    raw = _raw_labels(vectors, rule.threshold, cannot, method)
    labels = _enforce(faces, vectors, raw, constraints, cannot, rule.threshold)
    return _finish(faces, labels, rule, model, method, min_faces, constraints, vectors)


def _cannot_pairs(faces: Sequence[Face], constraints: Constraints) -> np.ndarray:
    """K×2 face indices that must not share a cluster: faces of one photo, and cannot-link feedback."""
    images = np.array([f.image for f in faces])
    order = np.argsort(images, kind="stable")
    _, starts, counts = np.unique(images[order], return_index=True, return_counts=True)
    pairs: list[np.ndarray] = []
    for s, c in zip(starts[counts > 1], counts[counts > 1], strict=True):
        idx = order[s : s + c]
        i, j = np.triu_indices(c, 1)
        pairs.append(np.stack([idx[i], idx[j]], axis=1))
    where = {f.id: i for i, f in enumerate(faces)}
    fb = [(where[a], where[b]) for a, b in constraints.cannot if a in where and b in where]
    if fb:
        pairs.append(np.array(fb, dtype=np.int64))
    return np.vstack(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)


def _raw_labels(vectors: np.ndarray, threshold: float, cannot: np.ndarray, method: str) -> np.ndarray:
    n = len(vectors)
    if n == 1:
        return np.zeros(1, np.int64)
    if n > MAX_DENSE:
        return _sparse_labels(vectors, threshold, cannot, method)
    return _dense_labels(vectors, threshold, cannot, method)


def _dense_labels(vectors: np.ndarray, threshold: float, cannot: np.ndarray, method: str) -> np.ndarray:
    from sklearn.cluster import HDBSCAN, AgglomerativeClustering  # heavy: see the module docstring

    if len(vectors) == 1:
        return np.zeros(1, np.int64)
    cut = float(1.0 - threshold)
    dist = 1.0 - vectors @ vectors.T
    np.clip(dist, 0.0, 2.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    if len(cannot):
        dist[cannot[:, 0], cannot[:, 1]] = CANNOT_LINK_DISTANCE
        dist[cannot[:, 1], cannot[:, 0]] = CANNOT_LINK_DISTANCE
    if method == "hdbscan":
        # min_samples=1: a face's core distance is its nearest neighbour's. HDBSCAN chooses its own cut (the
        # threshold only enters through the cannot-links); scikit-learn 1.9's cluster_selection_epsilon
        # crashes on precomputed distances (TypeError in _tree.epsilon_search), so it is not used.
        model = HDBSCAN(metric="precomputed", min_cluster_size=2, min_samples=1, copy=True)
        labels = model.fit_predict(np.minimum(dist, 2.5).astype(np.float64))
        singles = labels < 0
        labels[singles] = labels.max(initial=-1) + 1 + np.arange(int(singles.sum()))
        return labels.astype(np.int64)
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage=method, distance_threshold=cut)
    return model.fit_predict(dist).astype(np.int64)


def knn_graph(vectors: np.ndarray, k: int, cut: float) -> sparse.csr_matrix:
    """Symmetric N×N sparse graph of each face's ``k`` nearest neighbours within cosine distance ``cut``
    (the gallery's HNSW index; exact below a few thousand faces)."""
    from scipy import sparse  # heavy: see the module docstring

    n, dim = vectors.shape
    index: ExactIndex | HNSWIndex = HNSWIndex(dim) if n > 5_000 else ExactIndex(dim)
    index.add(np.arange(n, dtype=np.int64), vectors)
    keys, scores = index.search(vectors, min(k + 1, n))
    rows = np.repeat(np.arange(n), keys.shape[1])
    cols, sims = keys.ravel(), scores.ravel()
    keep = (cols >= 0) & (cols != rows) & (1.0 - sims <= cut)
    graph = sparse.coo_matrix((np.ones(int(keep.sum()), np.int8), (rows[keep], cols[keep])), shape=(n, n))
    return (graph + graph.T).tocsr()


def _sparse_labels(vectors: np.ndarray, threshold: float, cannot: np.ndarray, method: str) -> np.ndarray:
    """Average linkage without an N×N matrix, exact up to the neighbour graph's recall.

    For unit vectors the mean cosine similarity of two groups is ``(ΣA · ΣB) / (|A|·|B|)``, so average linkage
    needs only each group's sum vector. Candidate merges are the pairs of groups joined by an edge of the
    k-nearest-neighbour graph within the cut (two groups whose average distance is within the cut have at
    least one such pair); a heap pops the closest candidate, its distance exact. Cannot-linked groups never
    merge. (scikit-learn's ``connectivity`` option is not used: its average linkage over a sparse graph ignores
    the missing pairs — single linkage in effect — and chained LFW into a handful of clusters.)"""
    if method != "average":
        raise InvalidArgument(f"above {MAX_DENSE:,} faces only average linkage runs (got {method!r})")
    n = len(vectors)
    cut = float(1.0 - threshold)
    graph = knn_graph(vectors, SPARSE_NEIGHBOURS, cut).tocoo()
    upper = graph.row < graph.col
    rows, cols = graph.row[upper].astype(np.int64), graph.col[upper].astype(np.int64)
    dists = 1.0 - np.einsum("ij,ij->i", vectors[rows], vectors[cols])
    sums = vectors.astype(np.float32, copy=True)
    sizes = np.ones(n, np.float64)
    version = np.zeros(n, np.int64)
    parent = np.arange(n)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in zip(rows.tolist(), cols.tolist(), strict=True):
        neighbours[a].add(b)
        neighbours[b].add(a)
    forbidden: list[set[int]] = [set() for _ in range(n)]
    for a, b in cannot.tolist():
        forbidden[a].add(b)
        forbidden[b].add(a)
    heap = [(d, a, b, 0, 0) for d, a, b in zip(dists.tolist(), rows.tolist(), cols.tolist(), strict=True)]
    heapq.heapify(heap)
    while heap:
        dist, a, b, va, vb = heapq.heappop(heap)
        if dist > cut:
            break
        if parent[a] != a or parent[b] != b or version[a] != va or version[b] != vb or b in forbidden[a]:
            continue
        sums[a] += sums[b]
        sizes[a] += sizes[b]
        parent[b] = a
        version[a] += 1
        for x in neighbours[b]:
            neighbours[x].discard(b)
            if x != a:
                neighbours[x].add(a)
                neighbours[a].add(x)
        neighbours[a].discard(b)
        for x in forbidden[b]:
            forbidden[x].discard(b)
            forbidden[x].add(a)
            forbidden[a].add(x)
        candidates = np.fromiter(neighbours[a] - forbidden[a], dtype=np.int64)
        if len(candidates):
            near = 1.0 - (sums[candidates] @ sums[a]) / (sizes[candidates] * sizes[a])
            ok = near <= cut
            for d, x in zip(near[ok].tolist(), candidates[ok].tolist(), strict=True):
                heapq.heappush(heap, (d, a, x, int(version[a]), int(version[x])) if a < x else
                               (d, x, a, int(version[x]), int(version[a])))  # fmt: skip
    while True:  # every face to its group's root
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent.astype(np.int64)
        parent = up


class _Groups:
    """Face → group id with union-find over must-links (never uniting a cannot-linked pair)."""

    def __init__(self, n: int, cannot: np.ndarray) -> None:
        self.parent = np.arange(n)
        self.cannot: dict[int, set[int]] = {}
        for a, b in cannot.tolist():
            self.cannot.setdefault(a, set()).add(b)
            self.cannot.setdefault(b, set()).add(a)
        self.members: dict[int, set[int]] = {i: {i} for i in range(n)}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = int(self.parent[i])
        return i

    def conflict(self, a: set[int], b: set[int]) -> bool:
        small, big = (a, b) if len(a) <= len(b) else (b, a)
        return any(self.cannot.get(i, set()) & big for i in small)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.conflict(self.members[ra], self.members[rb]):
            return False
        self.parent[rb] = ra
        self.members[ra] |= self.members.pop(rb)
        return True


def _enforce(
    faces: Sequence[Face],
    vectors: np.ndarray,
    raw: np.ndarray,
    constraints: Constraints,
    cannot: np.ndarray,
    threshold: float,
) -> np.ndarray:
    """Apply must-links (merge the clusters they join, or move the linked faces when a merge would break a
    cannot-link) and then split every cluster that still holds a cannot-linked pair."""
    n = len(faces)
    where = {f.id: i for i, f in enumerate(faces)}
    units = _Groups(n, cannot)  # must-link components: moved as one
    for a, b in constraints.must:
        if a in where and b in where:
            units.union(where[a], where[b])
    groups: dict[int, set[int]] = {}
    for i, label in enumerate(raw.tolist()):
        groups.setdefault(int(label), set()).add(i)
    label_of = raw.copy()
    checker = units  # its cannot-link sets serve the group checks too
    for unit in [m for m in units.members.values() if len(m) > 1]:
        labels = sorted({int(label_of[i]) for i in unit}, key=lambda lab: -len(groups[lab]))
        if len(labels) < 2:
            continue
        merged = set().union(*(groups[lab] for lab in labels))
        if not _has_conflict(checker, merged):
            target = labels[0]
            for lab in labels[1:]:
                for i in groups.pop(lab):
                    label_of[i] = target
            groups[target] = merged
            continue
        # A merge would join a cannot-linked pair: move only the linked faces, to the largest group that
        # takes them without one.
        rest = {lab: groups[lab] - unit for lab in labels}
        ok = [lab for lab in labels if not checker.conflict(unit, rest[lab])]
        target = ok[0] if ok else int(max(groups) + 1)
        for lab in labels:
            groups[lab] = rest[lab]
        groups.setdefault(target, set()).update(unit)
        for i in unit:
            label_of[i] = target
    # Split the groups that hold a cannot-linked pair, keeping must-link units whole.
    next_label = int(max(groups, default=0)) + 1
    for lab in list(groups):
        members = groups[lab]
        if len(members) < 2 or not _has_conflict(checker, members):
            continue
        for part in _split(sorted(members), units, checker, vectors, threshold)[1:]:
            for i in part:
                label_of[i] = next_label
            next_label += 1
    return label_of


def _has_conflict(groups: _Groups, members: set[int]) -> bool:
    return any(groups.cannot.get(i, set()) & members for i in members)


def _split(
    members: list[int], units: _Groups, checker: _Groups, vectors: np.ndarray, threshold: float
) -> list[set[int]]:
    """Greedy: units (must-link components) in order of similarity to the group's centroid; each joins the
    most similar part it has no cannot-link with (mean similarity at least ``threshold``), else starts one."""
    by_unit: dict[int, set[int]] = {}
    for i in members:
        by_unit.setdefault(units.find(i), set()).add(i)
    centroid = normalise(vectors[members].mean(axis=0))
    unit_list = sorted(by_unit.values(), key=lambda u: -float(vectors[sorted(u)].mean(axis=0) @ centroid))
    parts: list[set[int]] = []
    sums: list[np.ndarray] = []
    for unit in unit_list:
        u = sorted(unit)
        best, best_sim = -1, -np.inf
        for p, (part, total) in enumerate(zip(parts, sums, strict=True)):
            if checker.conflict(unit, part):
                continue
            sim = float((vectors[u] @ total).mean() / len(part))
            if sim >= threshold and sim > best_sim:
                best, best_sim = p, sim
        if best < 0:
            parts.append(set(unit))
            sums.append(vectors[u].sum(axis=0))
        else:
            parts[best] |= unit
            sums[best] = sums[best] + vectors[u].sum(axis=0)
    parts.sort(key=len, reverse=True)
    return parts


def _finish(
    faces: Sequence[Face],
    labels: np.ndarray,
    rule: ThresholdRule,
    model: str,
    method: str,
    min_faces: int,
    constraints: Constraints,
    vectors: np.ndarray | None = None,
) -> Clustering:
    """Number the groups of at least ``min_faces`` faces 1…K by size (ties: first face), the rest 0 (a
    negative label is always an outlier)."""
    out = np.zeros(len(faces), np.int64)
    clusters: list[Cluster] = []
    if len(faces):
        assert vectors is not None
        uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        first = np.full(len(uniq), len(faces))
        np.minimum.at(first, inverse, np.arange(len(faces)))
        order = np.lexsort((first, -counts))
        for new_id, g in enumerate((g for g in order if counts[g] >= min_faces and uniq[g] >= 0), start=1):
            idx = np.nonzero(inverse == g)[0]
            out[idx] = new_id
            clusters.append(_make_cluster(new_id, idx, vectors))
    rule_text = rule.describe()
    return Clustering(tuple(faces), out, tuple(clusters), float(rule.threshold), rule_text, model, method,
                      min_faces, constraints)  # fmt: skip


def _make_cluster(cluster_id: int, idx: np.ndarray, vectors: np.ndarray) -> Cluster:
    centroid = normalise(vectors[idx].mean(axis=0))
    sims = vectors[idx] @ centroid
    order = np.argsort(-sims, kind="stable")
    members = tuple(int(i) for i in idx[order])
    return Cluster(cluster_id, members, members[0], float(sims.mean()), centroid)


def assign(clustering: Clustering, new_faceprints: Sequence[Faceprint | Face], *,
           images: Sequence[str] | None = None) -> Clustering:  # fmt: skip
    """Add faces without re-clustering: each joins the existing cluster with the most similar centroid at or
    above the clustering's threshold that holds no face it is cannot-linked with (same photo, feedback);
    the rest are clustered together with the old outliers into new clusters (same threshold and method)."""
    new = as_faces(new_faceprints, images)
    known = {f.id for f in clustering.faces}
    new = [f for f in new if f.id not in known]
    if not new:
        return clustering
    faces = list(clustering.faces) + new
    if len({f.vector.shape[0] for f in faces}) > 1:
        raise InvalidArgument("the new faces have another dimension than the clustering's")
    vectors = normalise(np.vstack([f.vector for f in faces]))
    labels = np.concatenate([clustering.labels, np.zeros(len(new), np.int64)])
    cannot = _cannot_pairs(faces, clustering.constraints)
    partners: dict[int, set[int]] = {}
    for a, b in cannot.tolist():
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    start = len(clustering.faces)
    if clustering.clusters:
        centroids = np.vstack([c.centroid for c in clustering.clusters])
        ids = np.array([c.id for c in clustering.clusters])
        sims = vectors[start:] @ centroids.T  # new × K
        for row, i in enumerate(range(start, len(faces))):
            for k in np.argsort(-sims[row]):
                if sims[row, k] < clustering.threshold:
                    break
                if not any(labels[j] == ids[k] for j in partners.get(i, ())):
                    labels[i] = ids[k]
                    break
    # The rest, with the old outliers, form new clusters among themselves.
    rest = np.nonzero(labels == 0)[0]
    raw = labels.copy()
    if len(rest):
        sub_faces = [faces[i] for i in rest]
        sub = cluster(sub_faces, threshold=clustering.threshold, min_faces=clustering.min_faces,
                      constraints=clustering.constraints, method=clustering.method,
                      model_id=clustering.model_id)  # fmt: skip
        offset = int(labels.max(initial=0)) + 1
        raw[rest] = np.where(sub.labels > 0, sub.labels + offset, -1 - np.arange(len(rest)))
    result = _finish(faces, raw, ThresholdRule(clustering.threshold, None), clustering.model_id, clustering.method,
                     1, clustering.constraints, vectors)  # fmt: skip
    return replace(result, rule=clustering.rule, min_faces=clustering.min_faces)
