"""Files and directories that hold people's data are private to their owner, whatever the umask.

Names, metadata, consent records and templates live in them, so faceprint creates every such directory
with mode 0700 and every such file with mode 0600 (and chmods after creating, since a umask can only take
bits away and the owner's must stay). What already exists is left as it is: it is the user's.
"""

from __future__ import annotations

import os
from pathlib import Path

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
