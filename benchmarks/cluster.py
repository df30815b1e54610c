"""Clustering benchmark: time and peak memory of ``faceprint.cluster.cluster`` on synthetic faceprints
fitted to real LFW faceprints (``benchmarks/gallery.py``'s two-level Gaussian model, imported from there).

    python benchmarks/cluster.py                          # 10k (dense baseline + sparse) and 100k
    python benchmarks/cluster.py --sizes 10000,100000,1000000

Each size runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own and not a larger earlier
run's. Faces are ``--per-person`` photos of ``size / per-person`` synthetic people, each face its own photo
(no same-photo cannot-links), clustered at the dlib-resnet-v1 threshold of FMR 1e-3 (0.926): the model the
real faceprints come from. The baseline, measured in the same run, is the dense N×N path at 10k faces (the
largest it takes, ``MAX_DENSE``); the ratio is each run's time and memory against it. "import" is the RSS of
a child that only imported the modules and generated the vectors (what the clustering itself adds is the
difference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from faceprint.cluster import Face, cluster, core
from gallery import FaceModel, real_faceprints  # benchmarks/ is on sys.path when run as a script

MODEL = "dlib-resnet-v1"
THRESHOLD = 0.926  # dlib-resnet-v1 at FMR 1e-3 (docs/clustering.md)


def synthetic(model: FaceModel, size: int, per_person: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    people = max(1, size // per_person)
    centres = model.identities(people, rng)
    labels = np.arange(size) % people
    return model.samples(centres[labels], rng).astype(np.float32), labels


def pairwise_f1(labels: np.ndarray, truth: np.ndarray) -> float:
    """Pairwise F1 of predicted clusters (0 = outlier: a singleton each) against the true people."""
    pred = np.where(labels > 0, labels, -1 - np.arange(len(labels)))

    def pairs(a: np.ndarray) -> int:
        _, counts = np.unique(a, return_counts=True)
        return int((counts * (counts - 1) // 2).sum())

    joint = pairs(pred.astype(np.int64) * (int(truth.max()) + 1) + truth)
    p, t = pairs(pred), pairs(truth)
    return 2 * joint / (p + t) if p + t else 1.0


def child(args: argparse.Namespace) -> None:
    data = np.load(args.model_file)
    model = FaceModel(data["mean"], data["between"], data["within"])
    vectors, truth = synthetic(model, args.size, args.per_person, args.seed)
    faces = [Face(f"f{i}", f"p{i}", v) for i, v in enumerate(vectors)]
    if args.mode == "sparse":
        core.MAX_DENSE = 0  # force the k-nearest-neighbour path at any size
    elif args.mode == "dense" and args.size > core.MAX_DENSE:
        core.MAX_DENSE = args.size
    out: dict[str, object] = {"size": args.size, "mode": args.mode}
    if args.mode != "none":
        start = time.perf_counter()
        result = cluster(faces, threshold=THRESHOLD, model_id=MODEL)
        out["seconds"] = time.perf_counter() - start
        out["clusters"] = len(result.clusters)
        out["outliers"] = len(result.outliers)
        out["f1"] = pairwise_f1(result.labels, truth)
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps(out))


def run_child(model_file: Path, size: int, mode: str, per_person: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model-file", str(model_file), "--size", str(size),
           "--mode", mode, "--per-person", str(per_person), "--seed", str(seed)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"size": size, "mode": mode, "error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated face counts (1000000 fits 24 GB)")
    parser.add_argument("--per-person", type=int, default=10, help="faces per synthetic person")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "faceprint-bench")
    parser.add_argument("--lfw-people", type=int, default=120)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    print(
        f"# faceprint clustering benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}, NumPy {np.__version__}"
    )
    vectors, labels = real_faceprints(args.cache, args.lfw_people, 4)
    model = FaceModel.fit(vectors, labels)
    model_file = args.cache / "cluster-face-model.npz"
    np.savez(model_file, mean=model.mean, between=model.between, within=model.within)
    print(f"model fitted to {len(vectors)} real LFW faceprints of {len(np.unique(labels))} people; "
          f"{args.per_person} faces per synthetic person, threshold {THRESHOLD} ({MODEL}, FMR 1e-3)\n")  # fmt: skip
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    base = run_child(model_file, 10_000, "dense", args.per_person, args.seed)
    runs = [base] + [run_child(model_file, n, "auto" if n > core.MAX_DENSE else "sparse", args.per_person,
                               args.seed) for n in sizes]  # fmt: skip
    print(f"{'faces':>9} {'path':>7} {'seconds':>8} {'peak MB':>8} {'import MB':>9} {'x time':>7} {'x mem':>6} "
          f"{'clusters':>8} {'outliers':>8} {'pair F1':>7}")  # fmt: skip
    for r in runs:
        if "error" in r:
            print(f"{r['size']:>9} {r['mode']:>7} failed: {r['error']}")
            continue
        idle = run_child(model_file, int(r["size"]), "none", args.per_person, args.seed)
        path = "dense" if r["mode"] == "dense" else "sparse"
        print(
            f"{r['size']:>9,} {path:>7} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f} {idle['peak_mb']:>9.0f} "
            f"{r['seconds'] / base['seconds']:>7.2f} {r['peak_mb'] / base['peak_mb']:>6.2f} "
            f"{r['clusters']:>8,} {r['outliers']:>8,} {r['f1']:>7.3f}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
