"""The ``faceprint`` command: a thin Typer layer over the library (one module per command group)."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="faceprint",
    help="Offline face detection, verification and identification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s")


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
