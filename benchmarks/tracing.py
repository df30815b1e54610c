"""What tracing costs: a span call, and a whole identify on a real photo, with tracing off and on.

    python benchmarks/tracing.py [--repeats 30] [--photo ../shared/data/faces/identities/person01/img43.jpg]

1. **One span**: ``with faceprint.tracing.span("detect", faces=1): pass``, best of 5 rounds of 200,000 calls
   with tracing off (the default: a shared no-op context manager), and of 20,000 calls with tracing on: the SDK's
   ``BatchSpanProcessor`` (what ``FACEPRINT_OTEL_ENDPOINT`` installs) feeding an exporter that drops the spans,
   so the figure is the SDK's cost in this process, not a collector's network time.
2. **Identify, end to end, in process**: decode the photo's bytes, detect (HOG), landmarks, align, embed, and
   search an embedded gallery of 1 subject — the stages that make spans — ``--repeats`` times each with tracing
   off and on, alternating (off, on, off, on …) so drift in the machine's load hits both; median and p90.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from faceprint import Pipeline, tracing
from faceprint.gallery import open_gallery
from faceprint.image import load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "identities"


class DropExporter(SpanExporter):
    """Accepts and discards spans (counts them)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def span_cost(calls: int) -> float:
    """ns per span: the best of 5 rounds (the machine is shared: the minimum is the cost, the rest is waiting)."""
    rounds = timeit.repeat('with tracing.span("detect", faces=1): pass', globals=globals(), number=calls, repeat=5)
    return min(rounds) / calls * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--photo", type=Path, default=DATA / "person01" / "img43.jpg")
    args = parser.parse_args()

    exporter = DropExporter()
    off_ns = span_cost(200_000)
    tracing.configure(BatchSpanProcessor(exporter))
    on_ns = span_cost(20_000)
    tracing.shutdown()
    print(f"one span: off {off_ns:.0f} ns, on {on_ns / 1000:.1f} µs (BatchSpanProcessor, spans dropped)")

    pipeline = Pipeline(detector="hog")
    data = args.photo.read_bytes()
    with tempfile.TemporaryDirectory() as home:
        gallery = open_gallery(Path(home) / "gallery")
        enrol = pipeline.largest_face(DATA / "person01" / "img27.jpg")[0]
        gallery.ensure_collection("default", enrol.model_id, enrol.dim)
        subject = gallery.add_subject("ada", collection="default")
        gallery.add_templates(subject.id, [enrol], collection="default")

        def identify() -> float:
            start = time.perf_counter()
            image = load_image(data)
            prints = pipeline.embed(image)
            gallery.identify(prints, collection="default", threshold=0.92)
            return time.perf_counter() - start

        identify()  # warm-up: models loaded, caches filled
        times: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.repeats):
            times["off"].append(identify())
            tracing.configure(BatchSpanProcessor(exporter))
            times["on"].append(identify())
            tracing.shutdown()
        gallery.close()
    for mode, values in times.items():
        values.sort()
        p90 = values[int(0.9 * (len(values) - 1))]
        print(f"identify, tracing {mode}: median {statistics.median(values) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms")
    delta = statistics.median(times["on"]) - statistics.median(times["off"])
    print(f"median difference on - off: {delta * 1000:+.2f} ms; spans exported: {exporter.spans}")


if __name__ == "__main__":
    main()
