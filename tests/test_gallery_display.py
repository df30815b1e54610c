"""Gallery locations in logs never show a database password."""

from __future__ import annotations

from pathlib import Path

from faceprint.gallery.location import display_location


def test_passwords_are_masked_even_after_path_conversion() -> None:
    dsn = "postgresql://face:s3cret@db.internal:5432/faces"
    assert display_location(dsn) == "postgresql://face:***@db.internal:5432/faces"
    assert "s3cret" not in display_location(Path(dsn))
    assert display_location("milvus://milvus:19530") == "milvus://milvus:19530"
    assert display_location(Path("/srv/faces")) == "/srv/faces"
