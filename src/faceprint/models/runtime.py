"""ONNX Runtime sessions: providers, threads, graph optimisation in one place."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from faceprint.errors import ModelError

DEVICES = ("cpu", "cuda")


def providers_for(device: str) -> list[str]:
    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelError(
                "device 'cuda' needs onnxruntime-gpu with a working CUDA install; "
                f"available providers: {', '.join(ort.get_available_providers())}"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def default_threads() -> int:
    env = os.environ.get("FACEPRINT_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ModelError(f"FACEPRINT_THREADS must be an integer, got {env!r}") from None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def create_session(model: bytes | Path, *, device: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """An inference session with all graph optimisations on and intra-op threads = cores."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Spinning worker threads burn a core while idle and slow everything else on a shared or busy machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=providers_for(device))
