"""The ``faceprint`` command: a thin Typer layer over the library (one module per command group)."""

from __future__ import annotations

import logging
import os

import typer

from faceprint.models.quantize import PRECISION_ENV, PRECISIONS

app = typer.Typer(
    name="faceprint",
    help="Offline face detection, verification and identification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help=f"Inference precision of every command: fp32 (default) or int8 (models quantized with shipped ranges; "
        f"others stay fp32). Same as {PRECISION_ENV}.",
    ),
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if precision is not None:
        if precision not in PRECISIONS:
            raise typer.BadParameter(
                f"must be one of {', '.join(PRECISIONS)}, got {precision!r}", param_hint="--precision"
            )
        # every PipelineConfig of this command reads it (faceprint.models.quantize.resolve_precision)
        os.environ[PRECISION_ENV] = precision


# Command groups register themselves on `app` when imported.
from faceprint.cli import (  # noqa: E402,F401
    cluster,
    core,
    evaluation,
    gallery,
    monitoring,
    service,
    video,
)
