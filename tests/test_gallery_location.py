"""Which backend a ``--gallery`` / ``FACEPRINT_GALLERY`` value selects, including after a Path round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceprint.gallery.location import server_location

DSN = "postgresql://faceprint:s3cret@db.internal:5432/faces?sslmode=require"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (DSN, ("postgres", DSN)),
        (Path(DSN), ("postgres", DSN)),  # the CLI and the service settings hand over Paths: "//" became "/"
        ("postgres://u@h/db", ("postgres", "postgres://u@h/db")),
        (
            Path("postgresql://postgres:@/postgres?host=/tmp/sock"),
            ("postgres", "postgresql://postgres:@/postgres?host=/tmp/sock"),
        ),
        ("milvus://localhost:19530", ("milvus", "milvus://localhost:19530")),
        (Path("milvus+https://m.example:443/faces"), ("milvus", "milvus+https://m.example:443/faces")),
        ("relative/gallery", None),
        (None, None),
    ],
)
def test_server_locations(value: object, expected: tuple[str, str] | None) -> None:
    assert server_location(value) == expected  # type: ignore[arg-type]


def test_db_files_are_milvus_lite_unless_they_are_an_embedded_gallery(tmp_path: Path) -> None:
    assert server_location(tmp_path / "faces.db") == ("milvus", str(tmp_path / "faces.db"))
    embedded = tmp_path / "old.db"
    embedded.mkdir()
    (embedded / "gallery.sqlite3").write_bytes(b"")
    assert server_location(embedded) is None


def test_the_service_settings_keep_a_dsn_usable() -> None:
    from faceprint.service.settings import Settings

    settings = Settings.from_env({"FACEPRINT_GALLERY": DSN, "FACEPRINT_HOME": "/tmp/fp-home"})
    assert server_location(settings.gallery) == ("postgres", DSN)
