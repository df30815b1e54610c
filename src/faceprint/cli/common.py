"""What every CLI command shares: exit codes, one-line errors on stderr, JSON output, progress bars."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from faceprint.errors import FaceprintError, IncompatibleFaceprints, InvalidImage, NoFaceFound
from faceprint.image import Image, load_image

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}
BAD_INPUT_ERRORS: tuple[type[Exception], ...] = (InvalidImage, NoFaceFound, IncompatibleFaceprints)

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("faceprint.cli")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one readable stderr line and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except BAD_INPUT_ERRORS as exc:
            raise fail(str(exc), EXIT_BAD_INPUT) from None
        except FaceprintError as exc:
            # Usage-level problems (unknown model, bad fmr, gallery errors) are the caller's to fix.
            raise fail(str(exc), getattr(exc, "exit_code", EXIT_BAD_INPUT)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as exc:  # anything else is our bug: say so, keep the traceback in debug logs
            log.debug("internal error", exc_info=True)
            raise fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL) from None

    return wrapper


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def expand_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders recursed for image files (sorted, so runs are reproducible)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(path)
    return out


def _columns() -> tuple:
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def progress(items: list[R], description: str, *, enabled: bool = True) -> Iterator[R]:
    """Iterate with a progress bar on stderr (hidden when not a terminal or disabled)."""
    if not enabled or len(items) <= 1:
        yield from items
        return
    with Progress(*_columns(), transient=True, console=None) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr for work that reports ``(done, total)`` itself (hidden when not a terminal)."""
    with Progress(*_columns(), transient=True, console=None) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


class ReadableImages:
    """Iterate ``(path, image)`` over ``files`` with a progress bar (for more than one file); a file that is
    not a readable image is reported on stderr, counted in :attr:`failed`, and skipped."""

    def __init__(self, files: list[Path], description: str) -> None:
        self.files = files
        self.description = description
        self.failed = 0

    def __iter__(self) -> Iterator[tuple[Path, Image]]:
        for path in progress(self.files, self.description, enabled=len(self.files) > 1):
            try:
                image = load_image(path)
            except InvalidImage as exc:
                typer.echo(f"error: {exc}", err=True)
                self.failed += 1
                continue
            yield path, image
