"""Alignment: similarity transforms and dlib-compatible chips."""

from __future__ import annotations

import numpy as np
import pytest

from faceprint.align.chips import ARCFACE_112, chip_matrix, dlib_template, extract_chips
from faceprint.align.transform import similarity_transform, transform_scale
from faceprint.image import load_image
from faceprint.models.catalogue import model_path
from tests.conftest import DATA, IDENTITIES


def test_similarity_transform_recovers_a_known_one() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, size=(5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)
    assert transform_scale(m) == pytest.approx(scale)


def test_template_landmarks_land_on_template_points() -> None:
    template = dlib_template(150, 0.25)
    m = chip_matrix(template.points, template)
    mapped = np.c_[template.points, np.ones(5)] @ m.T
    np.testing.assert_allclose(mapped, template.points, atol=0.6)  # dlib's span convention: < 1 px
    assert ARCFACE_112.points.shape == (5, 2)


@pytest.mark.parametrize(
    "photo",
    [IDENTITIES / "person01" / "img44.jpg", DATA / "lfw" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"],
)
def test_chips_match_dlib_get_face_chip(photo) -> None:
    dlib = pytest.importorskip("dlib")
    pixels = load_image(photo).pixels
    predictor = dlib.shape_predictor(str(model_path("dlib-shape5")))
    rect = dlib.get_frontal_face_detector()(pixels, 1)[0]
    shape = predictor(pixels, rect)
    points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
    reference = dlib.get_face_chip(pixels, shape, 150, 0.25)
    ours = extract_chips(pixels, [points], dlib_template(150, 0.25))[0]
    diff = np.abs(reference.astype(int) - ours.astype(int))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3


def test_large_faces_are_reduced_before_warping() -> None:
    # A face 8× larger than its chip: the chip must still look like the small-scale version.
    pixels = load_image(IDENTITIES / "person01" / "img44.jpg").pixels
    big = np.repeat(np.repeat(pixels, 8, axis=0), 8, axis=1)
    template = dlib_template(150, 0.25)
    points = np.array([[60.0, 80.0], [50.0, 80.0], [20.0, 80.0], [30.0, 80.0], [40.0, 100.0]])
    small_chip = extract_chips(pixels, [points], template)[0].astype(float)
    big_chip = extract_chips(big, [points * 8 + 3.5], template)[0].astype(float)
    assert np.abs(small_chip - big_chip).mean() < 6
    assert extract_chips(pixels, [], template).shape == (0, 150, 150, 3)
