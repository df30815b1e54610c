"""Enrolment from photos: image → faces → liveness gate (optional) → quality gate → templates, one
transaction per accepted photo.

Every photo gets an outcome with readable reasons; accepted photos are stored even when others fail
(partial success), and a photo that returned as accepted is on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from faceprint.errors import InvalidImage
from faceprint.gallery.base import DEFAULT_COLLECTION, Gallery
from faceprint.gallery.errors import ContractMismatch, SubjectNotFound
from faceprint.gallery.model import Consent, Metadata, Subject
from faceprint.image import Image, ImageSource, load_image
from faceprint.liveness import LivenessPolicy, LivenessResult, attack_reason
from faceprint.quality import Quality
from faceprint.types import Detection, Faceprint

#: With several faces in an enrolment photo the largest is used only when it is this many times larger
#: (by area) than the next; otherwise the photo is ambiguous and rejected.
DOMINANT_FACE_RATIO = 2.0


class FacePipeline(Protocol):
    """What enrolment needs from :class:`faceprint.pipeline.Pipeline`."""

    @property
    def model_id(self) -> str: ...

    def detect(self, image: Image) -> list[Detection]: ...

    def embed(self, image: Image, detections: Sequence[Detection] | None = None) -> list[Faceprint]: ...

    def chips(self, image: Image, detections: Sequence[Detection]) -> np.ndarray: ...

    def liveness(
        self,
        image: Image,
        detections: Sequence[Detection] | None = None,
        *,
        threshold: float | None = None,
        apcer: float | None = None,
    ) -> list[LivenessResult]: ...


@dataclass(frozen=True)
class ImageOutcome:
    source: str
    accepted: bool
    reasons: tuple[str, ...] = ()
    template_id: int | None = None
    quality: float | None = None
    faces: int = 0
    liveness: LivenessResult | None = None  # the enrolled face's liveness, when the policy checked it

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "image": self.source,
            "accepted": self.accepted,
            "reasons": list(self.reasons),
            "template_id": self.template_id,
            "quality": None if self.quality is None else round(self.quality, 3),
            "faces": self.faces,
        }
        if self.liveness is not None:
            out["liveness"] = self.liveness.to_dict()
        return out


@dataclass(frozen=True)
class EnrolReport:
    subject: Subject | None
    outcomes: tuple[ImageOutcome, ...]

    @property
    def accepted(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.accepted]

    @property
    def rejected(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if not o.accepted]

    def to_dict(self) -> dict[str, object]:
        return {
            "subject": None if self.subject is None else self.subject.name,
            "subject_id": None if self.subject is None else self.subject.id,
            "accepted": len(self.accepted),
            "rejected": len(self.rejected),
            "images": [o.to_dict() for o in self.outcomes],
        }


NO_FACE = "no face found"  # the reason of a photo without a face


def pick_face(detections: Sequence[Detection]) -> tuple[Detection | None, str | None]:
    """The one face to enrol from a photo, or the reason there is none."""
    if not detections:
        return None, NO_FACE
    ranked = sorted(detections, key=lambda d: d.area, reverse=True)
    if len(ranked) > 1 and ranked[0].area < DOMINANT_FACE_RATIO * ranked[1].area:
        return None, f"{len(ranked)} faces of similar size: use a photo where the person is alone or dominant"
    return ranked[0], None


def enrol_images(
    gallery: Gallery,
    pipeline: FacePipeline,
    subject: str,
    images: Sequence[ImageSource | Image],
    *,
    collection: str = DEFAULT_COLLECTION,
    create: bool = True,
    metadata: Metadata | None = None,
    consent: Consent | None = None,
    expires_at: datetime | None = None,
    keep_chips: bool = False,
    on_image: Callable[[ImageOutcome], None] | None = None,
    liveness: LivenessPolicy | None = None,
) -> EnrolReport:
    """Enrol ``images`` for ``subject`` (id or name; created when missing and ``create``). ``liveness``: check
    the chosen face of each photo (``flag``: reported in its outcome; ``require``: a face judged an attack is
    rejected like a blurred one, with the reason ``liveness: judged an attack (…)``)."""
    outcomes: list[ImageOutcome] = []
    subject_rec: Subject | None = None
    known_shas: set[str] = set()
    existing = {c.name: c for c in gallery.list_collections()}.get(collection)
    if existing is not None and existing.model_id != pipeline.model_id:
        raise ContractMismatch(collection, existing.model_id, pipeline.model_id)
    if existing is not None:
        subject_rec = gallery.find_subject(subject, collection=collection)
        if subject_rec is not None:
            known_shas = {
                t.source_sha256
                for t in gallery.list_templates(subject_rec.id, collection=collection)
                if t.source_sha256
            }

    for source in images:
        if isinstance(source, Image):
            label = source.source
        elif isinstance(source, bytes | bytearray | memoryview | np.ndarray):
            label = "<image>"
        else:
            label = str(source)
        outcome = _one_image(source, label, pipeline, known_shas, liveness)
        if isinstance(outcome, ImageOutcome):
            outcomes.append(outcome)
            if on_image:
                on_image(outcome)
            continue
        img, fp, faces, checked = outcome
        gallery.ensure_collection(collection, fp.model_id, fp.dim)
        if subject_rec is None:
            subject_rec = gallery.find_subject(subject, collection=collection)
            if subject_rec is None:
                if not create:
                    raise SubjectNotFound(subject, collection)
                subject_rec = gallery.add_subject(
                    subject, collection=collection, metadata=metadata, consent=consent, expires_at=expires_at
                )
        chips = None
        if keep_chips and fp.detection is not None:
            chips = [pipeline.chips(img, [fp.detection])[0]]
        (template,) = gallery.add_templates(
            subject_rec.id, [fp], collection=collection, source_sha256=[img.sha256], chips=chips
        )
        if img.sha256:
            known_shas.add(img.sha256)
        done = ImageOutcome(label, True, (), template.id, fp.quality, faces, checked)
        outcomes.append(done)
        if on_image:
            on_image(done)
    if subject_rec is not None:
        subject_rec = gallery.get_subject(subject_rec.id, collection=collection)
    return EnrolReport(subject_rec, tuple(outcomes))


def _one_image(
    source: ImageSource | Image,
    label: str,
    pipeline: FacePipeline,
    known_shas: set[str],
    liveness: LivenessPolicy | None = None,
) -> ImageOutcome | tuple[Image, Faceprint, int, LivenessResult | None]:
    """One photo through the enrolment rules (the one place they are applied: ``enrol_images`` and bulk
    enrolment both call it): a rejection with reasons, or the image, its faceprint, the number of faces and
    the face's liveness (``None`` when the policy does not check it)."""
    try:
        img = load_image(source, name=label)
    except InvalidImage as exc:
        return ImageOutcome(label, False, (exc.reason,))
    if img.sha256 and img.sha256 in known_shas:
        return ImageOutcome(label, False, ("already enrolled for this subject (same file)",))
    detections = pipeline.detect(img)
    face, reason = pick_face(detections)
    if face is None:
        return ImageOutcome(label, False, (reason or NO_FACE,), faces=len(detections))
    checked: LivenessResult | None = None
    if liveness is not None and liveness.checks:
        (checked,) = pipeline.liveness(img, [face], threshold=liveness.threshold, apcer=liveness.apcer)
        if liveness.refuses(checked):
            return ImageOutcome(label, False, (attack_reason(checked),), faces=len(detections), liveness=checked)
    (fp,) = pipeline.embed(img, [face])
    quality = fp.extra.get("quality")
    if isinstance(quality, Quality) and not quality.acceptable:
        return ImageOutcome(label, False, quality.reasons, quality=fp.quality, faces=len(detections), liveness=checked)
    return img, fp, len(detections), checked
