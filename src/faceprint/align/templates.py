"""Chip templates by name, for any landmark scheme.

A model's spec names the template it was trained with (``dlib5-150-p0.25``, ``arcface-112``); the pipeline
may have landmarks of another scheme (dlib's 5 points are eye corners and the nose base, ArcFace's are eye
centres, nose tip and mouth corners). Both schemes are placed on one reference face — dlib's 68-point mean
face (``get_face_chip_details``) — so a template defined in one scheme can be re-expressed in the other: fit
the similarity that takes the reference face's points of the template's scheme onto the template, and apply it
to the reference face's points of the other scheme. No per-photo guessing is involved.
"""

from __future__ import annotations

import re

import numpy as np

from faceprint.align.chips import _DLIB5_UNIT, ARCFACE_112, ChipTemplate, _extract_one, chip_matrix, dlib_template
from faceprint.align.landmark68 import arcface5_from_68
from faceprint.align.transform import similarity_transform
from faceprint.errors import ModelError

SCHEMES = ("dlib5", "arcface5")

# dlib's mean face, points 17…67 of the iBUG 68-point numbering, x/y in [0, 1] of an unpadded chip
# (dlib/image_transforms/interpolation.h, get_face_chip_details). _MEAN68[i] is point i (0…16 unused).
_MEAN_X = [
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991, 0.98004,
    0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217, 0.613373, 0.121737,
    0.187122, 0.265825, 0.334606, 0.260918, 0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751,
    0.719335, 0.254149, 0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874, 0.553364, 0.490127,
    0.42689,
]  # fmt: skip
_MEAN_Y = [
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915,
    0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345, 0.587326,
    0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423,
    0.244077, 0.245099, 0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746, 0.784792, 0.824182,
    0.831803, 0.824182,
]  # fmt: skip


def _reference_points() -> dict[str, np.ndarray]:
    mean68 = np.zeros((68, 2))
    mean68[17:, 0] = _MEAN_X
    mean68[17:, 1] = _MEAN_Y
    return {"dlib5": _DLIB5_UNIT.copy(), "arcface5": arcface5_from_68(mean68[None])[0]}


def convert_template(template: ChipTemplate, scheme: str) -> ChipTemplate:
    """``template`` re-expressed for landmarks of ``scheme`` (itself when the schemes agree)."""
    if scheme not in SCHEMES:
        raise ModelError(f"unknown landmark scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if template.landmark_scheme == scheme:
        return template
    ref = _reference_points()
    fit = similarity_transform(ref[template.landmark_scheme], template.points)
    points = np.hstack([ref[scheme], np.ones((5, 1))]) @ fit.T
    return ChipTemplate(f"{template.name}@{scheme}", template.size, points, scheme)


_DLIB_NAME = re.compile(r"^dlib5-(\d+)-p([0-9.]+)$")
_ARCFACE_NAME = re.compile(r"^arcface-(\d+)$")


def template_by_name(name: str) -> ChipTemplate:
    """``dlib5-<size>-p<padding>`` or ``arcface-<size>`` (the 112 template scaled to ``size``)."""
    if m := _DLIB_NAME.match(name):
        return dlib_template(int(m.group(1)), float(m.group(2)))
    if m := _ARCFACE_NAME.match(name):
        size = int(m.group(1))
        return ChipTemplate(name, size, ARCFACE_112.points * (size / 112), "arcface5")
    raise ModelError(f"unknown chip template {name!r}; use dlib5-<size>-p<padding> or arcface-<size>")


def chip_template(name: str, scheme: str) -> ChipTemplate:
    """The template ``name`` for landmarks of ``scheme``."""
    return convert_template(template_by_name(name), scheme)


def reframe_matrix(source: str, target: str) -> tuple[np.ndarray, ChipTemplate]:
    """2×3 matrix mapping pixels of a ``target`` chip to pixels of a ``source`` chip of the same face, and the
    target template (in the source's landmark scheme).

    A chip cut for template ``source`` shows the canonical face with its landmarks at ``source``'s points, so
    those points are the chip's own landmarks: re-cutting it for ``target`` is the usual alignment, with the
    stored chip as the image. No landmarks of the original photo are needed.
    """
    src = template_by_name(source)
    dst = convert_template(template_by_name(target), src.landmark_scheme)
    return chip_matrix(src.points, dst), dst


def reframe_coverage(source: str, target: str) -> float:
    """The fraction of a ``target`` chip whose pixels lie inside a ``source`` chip (1.0: all of it).

    The rest has no stored pixels and is filled black, as the aligner does for a face at a photo's edge.
    """
    if source == target:
        return 1.0
    matrix, dst = reframe_matrix(source, target)
    size = template_by_name(source).size
    grid = np.stack(np.meshgrid(np.arange(dst.size), np.arange(dst.size)), axis=-1).reshape(-1, 2)
    mapped = np.hstack([grid, np.ones((len(grid), 1))]) @ matrix.T
    inside = ((mapped >= -0.5) & (mapped <= size - 0.5)).all(axis=1)
    return float(inside.mean())


def reframe_chips(chips: np.ndarray, source: str, target: str) -> np.ndarray:
    """N chips aligned to template ``source`` → the same faces aligned to template ``target`` (N×S×S×3).

    Used to re-embed a gallery from its stored chips with a model that wants another template (``faceprint
    migrate``). With equal templates the chips are returned unchanged; otherwise each is warped once (see
    :func:`reframe_matrix`), and parts of the target chip outside the stored one are black
    (:func:`reframe_coverage` says how much).
    """
    src = template_by_name(source)
    if chips.ndim != 4 or chips.shape[1:] != (src.size, src.size, 3):
        raise ModelError(f"chips for template {source!r} are {src.size}×{src.size}×3, got shape {chips.shape[1:]}")
    if source == target:
        return chips
    matrix, dst = reframe_matrix(source, target)
    out = np.empty((len(chips), dst.size, dst.size, 3), dtype=np.uint8)
    for i, chip in enumerate(chips):
        out[i] = _extract_one(np.ascontiguousarray(chip), matrix, dst.size)
    return out
