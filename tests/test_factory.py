"""One place turns a model choice into models (faceprint.factory), and the layers import only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from faceprint.errors import InvalidArgument, ModelError
from faceprint.factory import CalibrationFileError, load_calibration, resolve_profile
from faceprint.image import load_image
from faceprint.models.registry import ModelRegistry
from faceprint.models.store import ModelStore
from faceprint.pipeline import Pipeline, PipelineConfig
from tests.conftest import IDENTITIES

SRC = Path(__file__).resolve().parents[1] / "src" / "faceprint"


def test_a_choice_becomes_a_profile(faceplugin_store: Path, tmp_path: Path) -> None:
    empty = ModelRegistry(ModelStore(tmp_path / "empty"))
    dlib = resolve_profile(empty)
    assert (dlib.embedder, dlib.detector, dlib.landmarks, dlib.dim) == ("dlib-resnet-v1", "cascade", "dlib-shape5", 128)
    assert dlib.detector_boxes == "dlib-mmod"
    installed = ModelRegistry(ModelStore(faceplugin_store))
    pack = resolve_profile(installed, "faceplugin-mbf")
    assert (pack.detector, pack.landmarks, pack.landmark_scheme) == (
        "faceplugin-ultraface",
        "faceplugin-landmark68",
        "arcface5",
    )
    # Explicit choices win; a model whose preferred parts are missing falls back to the built-in ones.
    assert resolve_profile(installed, "faceplugin-mbf", detector="hog").detector == "hog"
    assert resolve_profile(empty, "faceplugin-mbf").detector == "cascade"
    # `faceprint models use` makes the choice for every interface that names none.
    installed.set_default_embedder("faceplugin-mbf")
    try:
        assert resolve_profile(installed).embedder == "faceplugin-mbf"
        assert PipelineConfig(model_dir=faceplugin_store).profile == pack
    finally:
        (faceplugin_store / "config.json").unlink()
    with pytest.raises(ModelError, match="unknown embedder 'nope'"):
        resolve_profile(empty, "nope")
    with pytest.raises(ModelError, match="unknown detector 'nope'"):
        resolve_profile(empty, detector="nope")
    with pytest.raises(ModelError, match="unknown landmark model"):
        resolve_profile(empty, landmarks="dlib-mmod")


def test_calibration_of_a_choice(tmp_path: Path) -> None:
    shipped = load_calibration("dlib-resnet-v1")
    assert shipped is not None and shipped.model_id == "dlib-resnet-v1"
    assert load_calibration("my-own-model") is None
    own = tmp_path / "table.json"
    shipped.save(own)
    assert load_calibration("dlib-resnet-v1", own) == shipped
    with pytest.raises(CalibrationFileError, match="calibrates dlib-resnet-v1, not faceplugin-mbf"):
        load_calibration("faceplugin-mbf", own)
    own.write_text("{not json")
    with pytest.raises(CalibrationFileError, match="cannot read it"):
        load_calibration("dlib-resnet-v1", own)


def test_the_pack_detector_drops_a_blurred_background_it_calls_a_face(faceplugin_store: Path) -> None:
    """person07/img41: UltraFace rates a bokeh patch beside the portrait 0.99, a box larger than the face;
    ONet's second look drops it, so the largest face is the person again."""
    img = load_image(IDENTITIES / "person07" / "img41.jpg")
    profile = Pipeline(PipelineConfig(embedder="faceplugin-mbf", model_dir=faceplugin_store))
    confirmed = profile.detector
    raw = confirmed.inner.detect(img.pixels)  # type: ignore[attr-defined]
    assert len(raw) == 2 and min(s for _, s in raw) > 0.95
    kept = confirmed.detect(img.pixels)
    assert len(kept) == 1
    prob = confirmed.face_probability(img.pixels, np.array([b for b, _ in raw]))  # type: ignore[attr-defined]
    assert sorted(prob.tolist()) == [pytest.approx(0.137, abs=0.05), pytest.approx(1.0, abs=0.01)]
    # The face kept is the one the cascade finds.
    cascade = Pipeline(PipelineConfig(embedder="faceplugin-mbf", detector="cascade", model_dir=faceplugin_store))
    (face,) = cascade.detect(img)
    x1, y1, x2, y2 = kept[0][0]
    assert x1 < (face.box[0] + face.box[2]) / 2 < x2 and y1 < (face.box[1] + face.box[3]) / 2 < y2


def test_detector_options_are_checked_as_user_errors() -> None:
    with pytest.raises(InvalidArgument, match="min_face must be positive, got -1"):
        Pipeline(PipelineConfig(min_face=-1)).detector  # noqa: B018


# Each package may import only from the layers below it (and itself).
LAYERS = [
    {"errors", "types", "tracing", "image", "quality", "draw"},
    {"models"},
    {"detect", "align", "embed", "liveness"},
    {"matching"},
    {"factory"},
    {"pipeline", "verify"},
    {"gallery", "evaluation", "cluster", "video", "privacy"},
    {"service", "scale", "cli", "__init__"},
]


def _layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if module in names)


def test_lower_layers_never_import_higher_ones() -> None:
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        own = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("faceprint."):
                target = node.module.split(".")[1]
            elif isinstance(node, ast.ImportFrom) and node.module == "faceprint":
                target = "__init__"
            else:
                continue
            if target != own and _layer(target) > _layer(own):
                wrong.append(f"{rel}:{node.lineno} imports faceprint.{target}")
    assert not wrong, "\n".join(wrong)
