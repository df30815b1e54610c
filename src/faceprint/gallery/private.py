"""Files and directories that hold people's data are private to their owner, whatever the umask.

Names, metadata, consent records and templates live in them, so faceprint creates every such directory
with mode 0700 and every such file with mode 0600 (and chmods after creating, since a umask can only take
bits away and the owner's must stay). What already exists is left as it is — it is the user's — but a
gallery or service database that others can read is named in a warning when it is opened (galleries made
before this rule have 0755/0644 modes).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("faceprint.gallery")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` and each missing parent with mode 0700; an existing directory is not changed."""
    missing: list[Path] = []
    current = Path(path)
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # another process made it first: theirs to set
            continue
        os.chmod(directory, PRIVATE_DIR)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists.

    Done before SQLite opens a new database: SQLite creates the database's ``-wal`` and ``-shm`` files with
    the database file's mode, so they are private too (an empty file is a valid empty database)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def warn_if_shared(*paths: Path) -> list[Path]:
    """The existing ``paths`` that users other than the owner can read or write, each named in a warning
    with the command that makes it private (nothing is changed: it is the user's to decide)."""
    shared = []
    for path in paths:
        try:
            mode = Path(path).stat().st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            shared.append(Path(path))
            fix = "chmod 700" if stat.S_ISDIR(mode) else "chmod 600"
            log.warning(
                "%s is readable by other users (mode %o): it holds people's data; run `%s %s`",
                path, stat.S_IMODE(mode), fix, path,
            )  # fmt: skip
    return shared
