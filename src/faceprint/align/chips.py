"""Aligned face chips: landmarks → similarity transform → one warp per face.

Templates say where the landmarks of a canonical face sit in a chip. The dlib template places dlib's 5
points (eye corners, nose base) as ``dlib.get_face_chip_details`` does, with padding 0.25 for the ResNet
embedder; the ArcFace template places eye centres, nose tip and mouth corners in a 112×112 chip.

When a face is much larger than its chip, bilinear sampling alone would alias, so the face region is
first reduced by a Gaussian pyramid (as dlib's ``extract_image_chips`` does) and then warped.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from faceprint.align.transform import similarity_transform, transform_scale

# dlib's 5-point mean face, x/y in [0, 1] of an unpadded chip (eye corners ×4, nose base).
_DLIB5_UNIT = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


@dataclass(frozen=True)
class ChipTemplate:
    """Where a canonical face's landmarks sit in a ``size``×``size`` chip, for one landmark scheme."""

    name: str
    size: int
    points: np.ndarray  # 5×2, chip pixels
    landmark_scheme: str


def dlib_template(size: int = 150, padding: float = 0.25) -> ChipTemplate:
    points = (padding + _DLIB5_UNIT) / (2 * padding + 1) * size
    return ChipTemplate(f"dlib5-{size}-p{padding}", size, points, "dlib5")


ARCFACE_112 = ChipTemplate(
    "arcface-112",
    112,
    np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]),
    "arcface5",
)


def chip_matrix(landmarks: np.ndarray, template: ChipTemplate) -> np.ndarray:
    """2×3 matrix mapping chip pixels to image pixels.

    Follows dlib's ``chip_details`` convention exactly (so chips match ``dlib.get_face_chip``): the
    similarity fit gives scale, angle and the image point of the chip centre ``size/2``; the chip's pixel
    centres ``0 … size-1`` then span ``size·scale - 1`` image pixels around that point.
    """
    fit = similarity_transform(template.points, landmarks)
    size = template.size
    scale = transform_scale(fit)
    rotation = fit[:, :2] / scale
    centre = fit @ np.array([size / 2, size / 2, 1.0])
    step = (size * scale - 1) / (size - 1)
    matrix = np.empty((2, 3))
    matrix[:, :2] = rotation * step
    matrix[:, 2] = centre - matrix[:, :2] @ np.array([(size - 1) / 2, (size - 1) / 2])
    return matrix


def extract_chips(image: np.ndarray, landmarks: list[np.ndarray] | np.ndarray, template: ChipTemplate) -> np.ndarray:
    """N×size×size×3 uint8 chips, one per landmark set (N may be 0)."""
    size = template.size
    chips = np.empty((len(landmarks), size, size, 3), dtype=np.uint8)
    for i, points in enumerate(landmarks):
        chips[i] = _extract_one(image, chip_matrix(np.asarray(points, dtype=np.float64), template), size)
    return chips


def _extract_one(image: np.ndarray, chip_to_image: np.ndarray, size: int) -> np.ndarray:
    scale = transform_scale(chip_to_image)
    levels = max(0, int(np.floor(np.log2(scale))) if scale > 1 else 0)
    source, matrix = image, chip_to_image.copy()
    if levels:
        # Crop the face's region (with a margin for the blur kernel) before reducing: cheap on big photos.
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
        mapped = corners @ chip_to_image.T
        margin = 4 * 2**levels
        h, w = image.shape[:2]
        x0 = int(max(0, np.floor(mapped[:, 0].min()) - margin))
        y0 = int(max(0, np.floor(mapped[:, 1].min()) - margin))
        x1 = int(min(w, np.ceil(mapped[:, 0].max()) + margin))
        y1 = int(min(h, np.ceil(mapped[:, 1].max()) + margin))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            source = image[y0:y1, x0:x1]
            matrix[:, 2] -= (x0, y0)
            for _ in range(levels):
                source = cv2.pyrDown(source)
            # pyrDown maps pixel centre x to (x - 0.5) / 2 - ... ≈ x / 2 for integer-centred pixels
            matrix /= 2**levels
    return cv2.warpAffine(
        source,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
