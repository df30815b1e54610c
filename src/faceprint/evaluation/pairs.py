"""Pair lists for verification: LFW ``pairs.txt``, CSV files, and folders of identities.

LFW format (``pairs.txt`` / ``pairsDevTrain.txt``): a header line, then ``name i j`` for a same-person
pair and ``name1 i name2 j`` for a different-person pair, images at ``ROOT/name/name_{i:04d}.jpg``.
The header is either ``folds per_fold`` (View 2: each fold is ``per_fold`` same then ``per_fold``
different pairs) or a single count (the development split: ``count`` same then ``count`` different).
"""

from __future__ import annotations

import csv
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from faceprint.errors import FaceprintError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}

_TRUE = {"1", "yes", "y", "true", "t", "same", "genuine", "match", "mated", "positive"}
_FALSE = {"0", "no", "n", "false", "f", "different", "diff", "impostor", "imposter", "nonmatch", "non-match",
          "non-mated", "negative"}  # fmt: skip
_LABEL_COLUMNS = {"same", "label", "is_same", "issame", "same_person", "match", "genuine", "target", "y"}


class PairFileError(FaceprintError):
    """A pair file that cannot be read: names the file and line."""

    def __init__(self, path: Path | str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


@dataclass(frozen=True)
class Pair:
    """Two images and whether they show the same person; ``fold`` for k-fold protocols (else ``None``)."""

    a: Path
    b: Path
    same: bool
    fold: int | None = None


def parse_label(value: str) -> bool | None:
    """``True``/``False`` for the accepted same/different spellings, ``None`` if not a label."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return None


def _is_image(cell: str) -> bool:
    return Path(cell).suffix.lower() in IMAGE_SUFFIXES


def lfw_image(root: Path, name: str, number: str | int) -> Path:
    return root / name / f"{name}_{int(number):04d}.jpg"


def read_lfw_pairs(path: Path, root: Path) -> list[Pair]:
    """Read an LFW pairs file in either header format (see the module docstring)."""
    path, root = Path(path), Path(root)
    lines = [ln.split() for ln in path.read_text().splitlines()]
    if not lines or not lines[0]:
        raise PairFileError(path, 1, "empty file; expected a header line")
    header = lines[0]
    try:
        counts = [int(v) for v in header]
    except ValueError:
        raise PairFileError(path, 1, f"header must be 'folds pairs_per_fold' or 'count', got {header}") from None
    body = [(i + 2, f) for i, f in enumerate(lines[1:]) if f]
    if len(counts) == 2:
        folds, per_fold = counts
        block = 2 * per_fold
    elif len(counts) == 1:
        folds, per_fold, block = 1, counts[0], 2 * counts[0]
    else:
        raise PairFileError(path, 1, f"header must be 'folds pairs_per_fold' or 'count', got {header}")
    if len(body) != folds * block:
        raise PairFileError(path, None, f"header promises {folds * block} pairs, the file has {len(body)}")
    pairs = []
    for k, (lineno, fields) in enumerate(body):
        if len(fields) not in (3, 4):
            raise PairFileError(path, lineno, f"expected 3 (same) or 4 (different) fields, got {len(fields)}")
        i, j = fields[1], fields[-1]
        if not (i.isdigit() and j.isdigit()):
            raise PairFileError(path, lineno, "image numbers must be integers")
        same = len(fields) == 3
        other = fields[0] if same else fields[2]
        a, b = lfw_image(root, fields[0], i), lfw_image(root, other, j)
        pairs.append(Pair(a, b, same, k // block if folds > 1 else None))
    return pairs


def read_csv_pairs(path: Path, root: Path | None = None) -> list[Pair]:
    """Read ``image_a, image_b, label`` rows (comma, tab or semicolon separated; header optional).

    With a header, the label column is found by name (``same``, ``label``, ``is_same``, ``match``, …) and
    the first two other columns are the images; an optional ``fold`` column assigns folds. Without one, the
    columns are ``a, b, label[, fold]`` (a first row is data when its first two cells end in an image
    suffix and the third is a label). Relative image paths are resolved against ``root`` (default: the
    CSV file's folder).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    text = path.read_text(encoding="utf-8-sig")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel
    rows = [(i + 1, r) for i, r in enumerate(csv.reader(text.splitlines(), dialect)) if any(c.strip() for c in r)]
    if not rows:
        raise PairFileError(path, None, "no rows")
    first = [c.strip() for c in rows[0][1]]
    # "same" is both a label value and a column name: a data row has two image paths and a label.
    is_data = len(first) >= 3 and all(_is_image(c) for c in first[:2]) and parse_label(first[2]) is not None
    has_header = not is_data
    if has_header:
        names = [c.lower() for c in first]
        label_col = next((i for i, c in enumerate(names) if c in _LABEL_COLUMNS), None)
        if label_col is None:
            raise PairFileError(path, 1, f"no label column in header {first}; name it one of {sorted(_LABEL_COLUMNS)}")
        fold_col = names.index("fold") if "fold" in names else None
        image_cols = [i for i in range(len(names)) if i not in (label_col, fold_col)][:2]
        rows = rows[1:]
    else:
        label_col, image_cols = 2, [0, 1]
        fold_col = 3 if len(first) > 3 else None
    if len(image_cols) < 2:
        raise PairFileError(path, 1, "need two image columns and a label column")
    pairs = []
    for lineno, row in rows:
        cells = [c.strip() for c in row]
        if len(cells) <= max(*image_cols, label_col):
            raise PairFileError(path, lineno, f"expected at least {max(*image_cols, label_col) + 1} columns")
        same = parse_label(cells[label_col])
        if same is None:
            raise PairFileError(
                path, lineno, f"label {cells[label_col]!r} is not one of yes/no, 1/0, true/false, same/different"
            )
        fold = None
        if fold_col is not None and fold_col < len(cells) and cells[fold_col]:
            try:
                fold = int(cells[fold_col])
            except ValueError:
                raise PairFileError(path, lineno, f"fold {cells[fold_col]!r} is not an integer") from None
        a, b = (Path(cells[c]) for c in image_cols)
        pairs.append(Pair(a if a.is_absolute() else root / a, b if b.is_absolute() else root / b, same, fold))
    return pairs


def read_pairs(path: Path, root: Path | None = None) -> list[Pair]:
    """LFW or CSV, decided by the first line: LFW files start with one or two integers."""
    path = Path(path)
    if not path.is_file():
        raise PairFileError(path, None, "file not found")
    first = path.read_text(encoding="utf-8-sig").lstrip().split("\n", 1)[0].split()
    if 1 <= len(first) <= 2 and all(v.isdigit() for v in first):
        return read_lfw_pairs(path, Path(root) if root is not None else path.parent)
    return read_csv_pairs(path, root)


# -- folders of identities ------------------------------------------------------------------------------
def read_people(path: Path) -> list[str]:
    """Names from an LFW ``people*.txt`` file (``count`` line(s) then ``name<TAB>n`` lines) or a plain
    one-name-per-line list."""
    names = []
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if not fields or (len(fields) == 1 and fields[0].isdigit()):
            continue  # count lines (people.txt has one per fold)
        names.append(fields[0])
    return names


def identity_folders(root: Path, people: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """``{identity: sorted image paths}`` for each subfolder of ``root`` holding images.

    With ``people``, only those identities (a name missing under ``root`` is an error, not skipped).
    """
    root = Path(root)
    if not root.is_dir():
        raise FaceprintError(f"{root}: not a folder")
    if people is not None:
        missing = [p for p in people if not (root / p).is_dir()]
        if missing:
            raise FaceprintError(f"{len(missing)} listed people have no folder under {root}: {missing[:5]}")
        folders = [root / p for p in sorted(set(people))]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    out = {}
    for folder in folders:
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            out[folder.name] = images
    if not out:
        raise FaceprintError(f"{root}: no identity subfolders with images")
    return out


def folder_pairs(identities: dict[str, list[Path]], impostors: int | None = 10_000, seed: int = 0) -> list[Pair]:
    """All genuine pairs within each identity plus a seeded sample of ``impostors`` different-person pairs
    (all of them when ``impostors`` is ``None`` or exceeds the number available)."""
    pairs = [Pair(a, b, True) for images in identities.values() for a, b in itertools.combinations(images, 2)]
    owners = [(name, p) for name, images in identities.items() for p in images]
    n = len(owners)
    same_pairs = sum(len(v) * (len(v) - 1) // 2 for v in identities.values())
    available = n * (n - 1) // 2 - same_pairs
    if impostors is None or impostors >= available:
        pairs += [Pair(a, b, False) for (na, a), (nb, b) in itertools.combinations(owners, 2) if na != nb]
        return pairs
    rng = random.Random(seed)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < impostors:
        i, j = rng.randrange(n), rng.randrange(n)
        if owners[i][0] == owners[j][0]:
            continue
        chosen.add((min(i, j), max(i, j)))
    pairs += [Pair(owners[i][1], owners[j][1], False) for i, j in sorted(chosen)]
    return pairs
