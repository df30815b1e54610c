"""Files the service ships: the web UI's static folder."""

from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")
