"""Biometric data protection duties on top of the gallery: erasure receipts signed with the installation's
Ed25519 key (:mod:`.receipts`), subject access exports (:mod:`.access`). Retention and consent purposes are
enforced by the gallery itself (:class:`faceprint.gallery.model.SearchScope`); see docs/privacy.md."""
