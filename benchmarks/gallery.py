"""Gallery benchmark: enrol rate, identify latency, exact vs ANN (usearch and faiss HNSW), recall@1,
index build time, disk and RAM per template.

    python benchmarks/gallery.py                       # 128-d at 10k/50k/100k/1M, 512-d at 10k/100k
    python benchmarks/gallery.py --sizes 10000,100000 --dims 128 --queries 200

Vectors are "realistic": real faceprints of LFW photos (computed here with faceprint's own pipeline, cached)
fit a two-level Gaussian model — identity centres drawn with the between-person mean and covariance,
templates and probes around them with the within-person covariance — so a synthetic gallery has the same
genuine/impostor score statistics as real faces (printed at the start). 512-d vectors are the 128-d ones
lifted by a random orthonormal map plus isotropic noise (no 512-d model ships with faceprint).
Recall@1 is the fraction of probes whose ANN top-1 template is the exact top-1, in the same run; "subject
recall@1" the fraction whose ANN top-1 template belongs to the exact top-1's subject (every synthetic subject
has two templates, often nearly tied: returning the other one is no identification error, and identify()
ranks subjects). The HNSW graph of each (dim, size, seed) is kept in ``--cache`` with its measured build time
(a 1M graph takes ~20 min of CPU here), so re-running with other search widths does not rebuild it;
``--rebuild`` ignores it.
Timings are single queries (batch 1), one process, on whatever cores the machine has (see the header).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import faceprint.gallery.index as index_module
from faceprint.gallery import EmbeddedGallery
from faceprint.gallery.index import (
    HNSW_CONNECTIVITY,
    HNSW_EXPANSION_ADD,
    HNSW_EXPANSION_SEARCH,
    ExactIndex,
    HNSWIndex,
)
from faceprint.types import Faceprint

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
K_SEARCH = 64  # neighbours identify() asks the index for


# -- realistic vectors --------------------------------------------------------------------------------
def real_faceprints(cache: Path, people: int, per_person: int) -> tuple[np.ndarray, np.ndarray]:
    """Faceprints of LFW people with several photos (cached: computing them takes a minute or two)."""
    path = cache / f"lfw-faceprints-{people}x{per_person}.npz"
    if path.is_file():
        data = np.load(path)
        return data["vectors"], data["labels"]
    from faceprint.pipeline import Pipeline

    pipeline = Pipeline(detector="hog")
    folders = sorted(d for d in LFW.iterdir() if d.is_dir() and len(list(d.glob("*.jpg"))) >= per_person)
    vectors, labels = [], []
    for label, folder in enumerate(folders[:people]):
        for photo in sorted(folder.glob("*.jpg"))[:per_person]:
            prints = pipeline.embed(photo)
            if prints:  # the face nearest the centre: LFW photos are centred on their person
                best = min(prints, key=lambda p: abs((p.detection.box[0] + p.detection.box[2]) / 2 - 125))
                vectors.append(best.vector)
                labels.append(label)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, vectors=np.asarray(vectors, np.float32), labels=np.asarray(labels))
    return np.asarray(vectors, np.float32), np.asarray(labels)


@dataclass
class FaceModel:
    """Two-level Gaussian model of faceprints fitted to real ones."""

    mean: np.ndarray
    between: np.ndarray  # Cholesky factor of the identity-centre covariance
    within: np.ndarray  # Cholesky factor of the template-around-centre covariance
    lift: np.ndarray | None = None

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray) -> FaceModel:
        ids = np.unique(labels)
        centres = np.stack([vectors[labels == i].mean(0) for i in ids])
        residual = np.concatenate([vectors[labels == i] - vectors[labels == i].mean(0) for i in ids])
        dim = vectors.shape[1]
        ridge = 1e-6 * np.eye(dim)
        return cls(
            centres.mean(0),
            np.linalg.cholesky(np.cov(centres.T) + ridge),
            np.linalg.cholesky(np.cov(residual.T) * len(residual) / (len(residual) - len(ids)) + ridge),
        )

    def lifted(self, dim: int, rng: np.random.Generator) -> FaceModel:
        q, _ = np.linalg.qr(rng.standard_normal((dim, self.mean.shape[0])))
        return FaceModel(self.mean, self.between, self.within, q.astype(np.float32))

    def identities(self, n: int, rng: np.random.Generator) -> np.ndarray:
        z = rng.standard_normal((n, self.mean.shape[0])).astype(np.float32)
        return self.mean + z @ self.between.T.astype(np.float32)

    def samples(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = rng.standard_normal(centres.shape).astype(np.float32)
        x = centres + z @ self.within.T.astype(np.float32)
        if self.lift is not None:
            x = x @ self.lift.T
            x += rng.standard_normal(x.shape).astype(np.float32) * (0.3 / np.sqrt(x.shape[1]))
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def score_stats(vectors: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    s = v @ v.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(v), dtype=bool)
    return float(s[same & off].mean()), float(s[~same].mean())


# -- measurement helpers ------------------------------------------------------------------------------
def percentiles(samples_ms: list[float]) -> tuple[float, float, float]:
    q = np.percentile(samples_ms, [50, 95, 99])
    return float(q[0]), float(q[1]), float(q[2])


def time_queries(search: Callable[[np.ndarray], object], probes: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-query wall-clock and process-CPU milliseconds (CPU time is what a query costs on a machine
    shared with other work, where wall-clock percentiles mostly measure the scheduler)."""
    for p in probes[:5]:
        search(p[None, :])  # warm-up
    wall, cpu = [], []
    for p in probes:
        c0, t0 = time.process_time(), time.perf_counter()
        search(p[None, :])
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@dataclass
class Row:
    dim: int
    size: int
    method: str
    build_s: float
    build_cpu_s: float
    p50: float
    p95: float
    p99: float
    cpu_p50: float
    cpu_p95: float
    recall: float
    subject_recall: float
    ram_mb: float
    disk_mb: float


def _row(
    dim: int,
    size: int,
    method: str,
    build: tuple[float, float],
    lat: tuple[list[float], list[float]],
    recall: tuple[float, float],
    ram: float,
    disk: float,
) -> Row:
    wall, cpu = lat
    c50, c95, _ = percentiles(cpu)
    return Row(dim, size, method, build[0], build[1], *percentiles(wall), c50, c95, *recall, ram, disk)


class Clock:
    def __enter__(self) -> Clock:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0

    @property
    def both(self) -> tuple[float, float]:
        return self.wall, self.cpu


def bench_indexes(
    dim: int,
    size: int,
    model: FaceModel,
    n_probes: int,
    use_faiss: bool,
    seed: int,
    ef_sweep: list[int],
    cache: Path | None = None,
) -> list[Row]:
    rng = np.random.default_rng(seed)
    subjects = size // 2
    centres = model.identities(subjects, rng)
    gallery = np.concatenate([model.samples(centres, rng), model.samples(centres, rng)])
    keys = np.arange(len(gallery), dtype=np.int64)
    subject = np.concatenate([np.arange(subjects), np.arange(subjects)])  # template key → subject

    def recall(found: np.ndarray) -> tuple[float, float]:
        return float(np.mean(found == truth)), float(np.mean(subject[found] == subject[truth]))

    probe_ids = rng.integers(0, subjects, n_probes)
    probes = model.samples(centres[probe_ids], rng)
    rows: list[Row] = []

    before = rss_mb()
    with Clock() as clock:
        exact = ExactIndex(dim)
        exact.add(keys, gallery)
    ram = rss_mb() - before
    truth = exact.search(probes, 1)[0][:, 0]
    lat = time_queries(lambda q: exact.search(q, K_SEARCH), probes)
    rows.append(_row(dim, size, "exact (NumPy)", clock.both, lat, (1.0, 1.0), ram, len(exact.to_bytes()) / 1e6))

    stem = f"hnsw-{dim}-{size}-{seed}-m{index_module.HNSW_CONNECTIVITY}"
    stem += "" if index_module.HNSW_DTYPE == "f32" else f"-{index_module.HNSW_DTYPE}"
    hnsw, build = _hnsw(dim, keys, gallery, cache / stem if cache else None)
    ram = hnsw._index.memory_usage / 1e6
    disk = len(hnsw.to_bytes()) / 1e6
    for ef in sorted(set([*ef_sweep, HNSW_EXPANSION_SEARCH])):
        hnsw._index.expansion_search = ef
        found = hnsw.search(probes, 1)[0][:, 0]
        lat = time_queries(lambda q: hnsw.search(q, K_SEARCH), probes)
        label = f"usearch HNSW ef={ef}" + (" (default)" if ef == HNSW_EXPANSION_SEARCH else "")
        rows.append(_row(dim, size, label, build, lat, recall(found), ram, disk))

    if use_faiss:
        import faiss

        before = rss_mb()
        with Clock() as clock:
            index = faiss.IndexHNSWFlat(dim, HNSW_CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EXPANSION_ADD
            index.add(gallery)
        index.hnsw.efSearch = HNSW_EXPANSION_SEARCH
        ram = rss_mb() - before
        found = index.search(probes, 1)[1][:, 0]
        lat = time_queries(lambda q: index.search(q, K_SEARCH), probes)
        disk = faiss.serialize_index(index).nbytes / 1e6
        label = f"faiss HNSW ef={HNSW_EXPANSION_SEARCH}"
        rows.append(_row(dim, size, label, clock.both, lat, recall(found), ram, disk))
    return rows


def _hnsw(dim: int, keys: np.ndarray, gallery: np.ndarray, stem: Path | None) -> tuple[HNSWIndex, tuple[float, float]]:
    """The HNSW index over ``gallery`` and its (wall, CPU) build seconds — restored from ``stem`` when a graph
    built with the same parameters is there (the build time is the one measured when it was built)."""
    import json

    params = {
        "connectivity": index_module.HNSW_CONNECTIVITY,
        "expansion_add": HNSW_EXPANSION_ADD,
        "dtype": index_module.HNSW_DTYPE,
        "n": len(keys),
    }
    meta = stem.with_suffix(".json") if stem else None
    if stem is not None and meta is not None and meta.is_file() and stem.with_suffix(".usearch").is_file():
        saved = json.loads(meta.read_text())
        if saved.get("params") == params:
            hnsw = HNSWIndex(dim)
            hnsw._index.load(str(stem.with_suffix(".usearch")))
            hnsw._index.expansion_search = HNSW_EXPANSION_SEARCH
            return hnsw, (saved["build_s"], saved["build_cpu_s"])
    with Clock() as clock:
        hnsw = HNSWIndex(dim)
        hnsw.add(keys, gallery)
    if stem is not None and meta is not None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        hnsw._index.save(str(stem.with_suffix(".usearch")))
        meta.write_text(json.dumps({"params": params, "build_s": clock.wall, "build_cpu_s": clock.cpu}))
    return hnsw, clock.both


@dataclass
class GalleryRow:
    templates: int
    enrol_per_s_tx: float  # one transaction (fsync) per subject, as `faceprint enroll` does
    enrol_per_s_bulk: float  # bulk() import
    rebuild_s: float
    kind: str
    p50: float
    p95: float
    p99: float
    cpu_p95: float
    disk_bytes_per_template: float


def bench_gallery(size: int, model: FaceModel, n_probes: int, seed: int, tx_subjects: int) -> GalleryRow:
    rng = np.random.default_rng(seed)
    subjects = size // 2
    centres = model.identities(subjects, rng)
    a, b = model.samples(centres, rng), model.samples(centres, rng)
    with tempfile.TemporaryDirectory() as tmp:
        g = EmbeddedGallery(Path(tmp) / "g", key=bytes(32))
        g.ensure_collection("default", "bench", a.shape[1])
        t0 = time.perf_counter()
        for i in range(min(tx_subjects, subjects)):
            s = g.add_subject(f"s{i}")
            g.add_templates(s.id, [Faceprint(a[i], "bench"), Faceprint(b[i], "bench")])
        per_tx = 2 * min(tx_subjects, subjects) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with g.bulk():
            for i in range(tx_subjects, subjects):
                s = g.add_subject(f"s{i}")
                g.add_templates(s.id, [Faceprint(a[i], "bench"), Faceprint(b[i], "bench")])
        bulk = 2 * max(1, subjects - tx_subjects) / (time.perf_counter() - t0)
        g.close()
        g = EmbeddedGallery(Path(tmp) / "g", key=bytes(32))
        t0 = time.perf_counter()
        g.rebuild_index()
        rebuild = time.perf_counter() - t0
        ids = rng.integers(0, subjects, n_probes)
        probes = [Faceprint(v, "bench") for v in model.samples(centres[ids], rng)]
        wall, cpu = time_queries(
            lambda q: g.identify([Faceprint(q[0], "bench")], threshold=0.9), np.stack([p.vector for p in probes])
        )
        kind = g.stats().index_kind
        g.close()
        disk = sum(p.stat().st_size for p in (Path(tmp) / "g").iterdir())
    return GalleryRow(size, per_tx, bulk, rebuild, kind, *percentiles(wall), percentiles(cpu)[1], disk / size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000,100000,1000000")
    parser.add_argument("--sizes-512", default="10000,100000")
    parser.add_argument("--dims", default="128,512")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--gallery-sizes", default="10000,100000", help="end-to-end EmbeddedGallery runs")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--faiss-max", type=int, default=100_000, help="largest size also run on faiss")
    parser.add_argument("--ef-sweep", default="32,64,128,256", help="extra HNSW search widths to measure")
    parser.add_argument("--rebuild", action="store_true", help="build HNSW graphs even when cached")
    parser.add_argument("--connectivity", type=int, default=None, help="HNSW graph degree (default: faceprint's)")
    parser.add_argument("--dtype", default=None, help="HNSW vector element type: f32, f16 (default: faceprint's)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "faceprint-bench")
    parser.add_argument("--lfw-people", type=int, default=120)
    parser.add_argument(
        "--backends",
        default="",
        help="instead of the index sweep: the same workload on these gallery backends (embedded,postgres,milvus)",
    )
    parser.add_argument("--backend-size", type=int, default=100_000, help="templates for --backends")
    parser.add_argument("--tx-subjects", type=int, default=500, help="subjects enrolled one transaction each")
    args = parser.parse_args(argv)
    if args.connectivity:
        index_module.HNSW_CONNECTIVITY = args.connectivity  # HNSWIndex reads it when it builds a graph
    if args.dtype:
        index_module.HNSW_DTYPE = args.dtype
    print(
        f"# faceprint gallery benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}, NumPy {np.__version__}"
    )
    vectors, labels = real_faceprints(args.cache, args.lfw_people, 4)
    model = FaceModel.fit(vectors, labels)
    rng = np.random.default_rng(0)
    sc = model.identities(200, rng)
    synth = np.concatenate([model.samples(sc, rng), model.samples(sc, rng)])
    synth_labels = np.concatenate([np.arange(200), np.arange(200)])
    g_real, i_real = score_stats(vectors, labels)
    g_syn, i_syn = score_stats(synth, synth_labels)
    print(
        f"real LFW faceprints: {len(vectors)} of {len(np.unique(labels))} people; mean cosine genuine "
        f"{g_real:.3f} / impostor {i_real:.3f}; synthetic: genuine {g_syn:.3f} / impostor {i_syn:.3f}\n"
    )
    if args.backends:
        from gallery_backends import run_backends  # benchmarks/ is on sys.path when run as a script

        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        run_backends(backends, args.backend_size, model, queries=args.queries, tx_subjects=args.tx_subjects)
        print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")
        return

    print(
        "| dim | templates | method | build s (cpu s) | p50 ms | p95 ms | p99 ms | cpu p50 ms | cpu p95 ms "
        "| recall@1 | subject recall@1 | RAM MB | disk MB | cpu p95 vs exact |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    ef_sweep = [int(e) for e in args.ef_sweep.split(",") if e]
    for dim in [int(d) for d in args.dims.split(",")]:
        sizes = args.sizes if dim == 128 else args.sizes_512
        m = model if dim == 128 else model.lifted(dim, np.random.default_rng(1))
        for size in [int(s) for s in sizes.split(",") if s]:
            use_faiss = not args.no_faiss and size <= args.faiss_max
            rows = bench_indexes(
                dim,
                size,
                m,
                args.queries,
                use_faiss,
                seed=size + dim,
                ef_sweep=ef_sweep,
                cache=None if args.rebuild else args.cache,
            )
            base = rows[0]
            for r in rows:
                print(
                    f"| {r.dim} | {r.size:,} | {r.method} | {r.build_s:.1f} ({r.build_cpu_s:.1f}) | {r.p50:.2f} | "
                    f"{r.p95:.2f} | {r.p99:.2f} | {r.cpu_p50:.2f} | {r.cpu_p95:.2f} | {r.recall:.4f} | "
                    f"{r.subject_recall:.4f} | "
                    f"{r.ram_mb:.0f} | {r.disk_mb:.0f} | {base.cpu_p95 / max(r.cpu_p95, 1e-3):.1f}× |",
                    flush=True,
                )

    print(
        "\n| templates | enrol/s (1 tx per subject) | enrol/s (bulk) | index rebuild s | search | identify p50 ms "
        "| p95 ms | p99 ms | cpu p95 ms | disk bytes/template |"
    )
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|", flush=True)
    for size in [int(s) for s in args.gallery_sizes.split(",") if s]:
        g = bench_gallery(size, model, args.queries, seed=7, tx_subjects=500)
        print(
            f"| {g.templates:,} | {g.enrol_per_s_tx:.0f} | {g.enrol_per_s_bulk:.0f} | {g.rebuild_s:.2f} | {g.kind} | "
            f"{g.p50:.2f} | {g.p95:.2f} | {g.p99:.2f} | {g.cpu_p95:.2f} | {g.disk_bytes_per_template:.0f} |",
            flush=True,
        )
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")


if __name__ == "__main__":
    main()
