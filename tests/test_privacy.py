"""Issue 18: biometric data protection as enforced policy, outside the backend contract suite.

- erasure receipts: signed with the installation's Ed25519 key, verified offline; an altered, malformed or
  foreign-key receipt is refused with a clear error; rotating the signing key destroys the old private key
  while receipts it signed still verify;
- erasure on the embedded backend leaves no template bytes in any file of the gallery directory (the SQLite
  database, its WAL, the index snapshot), scanned byte by byte;
- the CLI end to end on real photos and the real dlib models: purposes, receipts, withdrawal, access export;
- the service: purpose-bound keys, consent withdrawal, personal-data, erasure receipts, the scheduled purge.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from faceprint.cli import app as cli_app
from faceprint.errors import FaceprintError
from faceprint.gallery import Consent, EmbeddedGallery
from faceprint.gallery.crypto import TemplateCipher
from faceprint.gallery.index import load_index
from faceprint.gallery.model import Erasure
from faceprint.privacy.errors import MalformedReceipt, ReceiptNotTrusted, ReceiptSignatureInvalid
from faceprint.privacy.receipts import ReceiptFacts, SigningKeys, make_receipt, verify_receipt
from faceprint.service.app import create_app
from faceprint.service.settings import Settings
from tests.conftest import identity_photos
from tests.gallery_contract import DIM, MODEL, THRESHOLD, People

KEY = bytes.fromhex("44" * 32)


# -- receipts --------------------------------------------------------------------------------------------
def _erasure() -> Erasure:
    return Erasure("sid-1", "Ada", "default", "embedded", 3, 1, 2, True, 3, 0, 3, (7, 8, 9))


def test_a_receipt_verifies_and_any_alteration_fails(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path / "receipt-keys")
    signed = keys.sign(make_receipt(_erasure(), ReceiptFacts("subject", actor="k1", template_key_id="abc")))
    text = json.dumps(signed)
    receipt = verify_receipt(text, keys.public_keys())
    assert receipt["subject_id"] == "sid-1" and receipt["deleted"]["templates"] == 3
    assert "Ada" not in text  # a receipt names the subject by id only: the name was erased too
    assert (tmp_path / "receipt-keys").stat().st_mode & 0o777 == 0o700

    tampered = json.loads(text)
    tampered["receipt"]["deleted"]["templates"] = 0
    with pytest.raises(ReceiptSignatureInvalid, match="the signature does not match the receipt: it was altered"):
        verify_receipt(json.dumps(tampered), keys.public_keys())
    other = SigningKeys(tmp_path / "someone-else")
    forged = other.sign(signed["receipt"])
    with pytest.raises(ReceiptNotTrusted, match="which is not a trusted receipt key"):
        verify_receipt(json.dumps(forged), keys.public_keys())
    swapped = dict(signed, signing_key=forged["signing_key"], signature=signed["signature"])
    with pytest.raises(ReceiptSignatureInvalid):
        verify_receipt(json.dumps(swapped))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"receipt": {}, "signature": "x"}', "no 'signing_key' field"),
        ('{"receipt": {"id": 1}, "signature": "x", "signing_key": {"id": "a", "public_key": "b"}}', "lacks version"),
    ],
)
def test_malformed_receipts_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(MalformedReceipt, match=message):
        verify_receipt(text, origin="r.json")


def test_bad_base64_is_a_malformed_receipt(tmp_path: Path) -> None:
    signed = SigningKeys(tmp_path).sign(make_receipt(_erasure(), ReceiptFacts("face")))
    signed["signature"] = "***"
    with pytest.raises(MalformedReceipt, match="not valid base64 Ed25519"):
        verify_receipt(json.dumps(signed))


def test_rotating_the_signing_key_retires_the_old_one(tmp_path: Path) -> None:
    keys = SigningKeys(tmp_path / "k")
    old_signed = keys.sign(make_receipt(_erasure(), ReceiptFacts("subject")))
    old_id = old_signed["signing_key"]["id"]
    before, new_id = keys.rotate()
    assert before == old_id != new_id
    assert not (tmp_path / "k" / f"{old_id}.key").exists()  # the old private key is gone: it can sign nothing
    assert sorted(keys.public_keys()) == sorted([old_id, new_id])
    assert verify_receipt(json.dumps(old_signed), keys.public_keys())["id"] == old_signed["receipt"]["id"]
    assert keys.sign({"x": 1})["signing_key"]["id"] == new_id
    assert (tmp_path / "k" / f"{new_id}.key").stat().st_mode & 0o777 == 0o600


# -- erasure leaves no bytes on disk: embedded -----------------------------------------------------------
def files_holding(root: Path, needles: list[bytes]) -> dict[str, list[int]]:
    """File → indexes of the needles it contains, for every file under ``root``."""
    found: dict[str, list[int]] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits = [i for i, needle in enumerate(needles) if needle in data]
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def pieces(blob: bytes, size: int = 256) -> list[bytes]:
    """A blob as ``size``-byte pieces: a large one (a chip) spans SQLite overflow pages, so it is never
    contiguous in the file, but each piece that falls inside one page is."""
    return [blob[i : i + size] for i in range(0, len(blob) - size + 1, size)] if len(blob) > 2 * size else [blob]


def test_embedded_erasure_leaves_no_template_bytes_in_any_file(tmp_path: Path) -> None:
    people = People()
    path = tmp_path / "gallery"
    name = "Adalinde Quist"
    chips = [np.random.default_rng(i).integers(0, 255, (112, 112, 3), dtype=np.uint8) for i in range(3)]
    with EmbeddedGallery(path, key=KEY, ann_min_size=2) as g:
        g.ensure_collection("default", MODEL, DIM)
        ada = g.add_subject(name, consent=Consent("her", datetime.now(UTC), ("access-control",)))
        g.add_templates(ada.id, people.prints_of("ada", 3), chips=chips, source_sha256=["a" * 64] * 3)
        g.add_negative(people.stranger(), ada.id)
        bob = g.add_subject("bob")
        g.add_templates(bob.id, people.prints_of("bob", 3))
        g.identify([people.print_of("ada")], threshold=THRESHOLD)  # the index (HNSW) holds her: saved on close
        ada_tids = [t.id for t in g.list_templates(ada.id)]
    with sqlite3.connect(path / "gallery.sqlite3") as conn:
        blobs = [bytes(r[0]) for r in conn.execute("SELECT vector FROM templates WHERE subject_id = ?", (ada.id,))]
        blobs += [bytes(r[0]) for r in conn.execute("SELECT chip FROM templates WHERE chip IS NOT NULL")]
        blobs += [bytes(r[0]) for r in conn.execute("SELECT vector FROM negatives")]
        kept = [bytes(r[0]) for r in conn.execute("SELECT vector FROM templates WHERE subject_id = ?", (bob.id,))]
    conn.close()
    hers = [piece for blob in blobs for piece in pieces(blob)] + [ada.id.encode(), name.encode()]
    before = files_holding(path, hers)
    assert len({i for hits in before.values() for i in hits}) > 0.9 * len(hers)  # the scan sees them before
    assert (path / "index-1.fpidx").exists()

    with EmbeddedGallery(path, key=KEY, ann_min_size=2) as g:
        g.identify([people.print_of("bob")], threshold=THRESHOLD)  # loads the snapshot that holds her
        erasure = g.delete_subject(ada.id)
        assert (erasure.templates, erasure.chips, erasure.negatives, erasure.consent_record) == (3, 3, 1, True)
        assert erasure.change_log_rows == 3  # the log's "added" rows of her templates
        assert files_holding(path, hers) == {}  # at once, while the gallery is open, before any scrub
        (ans,) = g.identify([people.print_of("bob")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "bob"
        assert g.scrub().startswith("database vacuumed")
        g.identify([people.print_of("bob")], threshold=THRESHOLD)
    assert files_holding(path, hers) == {}
    assert len(files_holding(path, kept)) == 1  # the control: bob's templates are found where they are kept
    loaded = load_index(path / "index-1.fpidx", dim=DIM, cipher=TemplateCipher(KEY), ann_min_size=2)
    assert loaded is not None  # the snapshot saved on close: encrypted, and without her templates
    keys, _ = loaded[0].items()
    assert not set(ada_tids) & set(keys.tolist()) and len(keys) == 3


def test_change_log_is_pruned(tmp_path: Path) -> None:
    people = People()
    a = EmbeddedGallery(tmp_path / "g", key=KEY)
    a.ensure_collection("default", MODEL, DIM)
    b = EmbeddedGallery(tmp_path / "g", key=KEY)  # another process, with an index of its own
    for i in range(3):
        s = a.add_subject(f"p{i}")
        a.add_templates(s.id, people.prints_of(f"p{i}", 2))
    b.identify([people.print_of("p0")], threshold=THRESHOLD)  # b's index: generation 6
    for i in range(3, 6):
        s = a.add_subject(f"p{i}")
        a.add_templates(s.id, people.prints_of(f"p{i}", 2))
    a.delete_subject("p0")
    with pytest.raises(FaceprintError, match="keep must be at least 0"):
        a.prune_change_log(keep=-1)
    assert a.prune_change_log(keep=2) > 0
    with sqlite3.connect(tmp_path / "g" / "gallery.sqlite3") as conn:
        gen, since = conn.execute("SELECT generation, log_since FROM collections").fetchone()
        assert since == gen - 2 and conn.execute("SELECT MIN(generation) FROM index_log").fetchone()[0] > since
    conn.close()
    # b is behind what the log still holds: it rebuilds, and answers as a fresh index would
    (p4,) = b.identify([people.print_of("p4")], threshold=THRESHOLD)
    (p0,) = b.identify([people.print_of("p0")], threshold=THRESHOLD)
    assert p4.match is not None and p4.match.subject == "p4" and p0.match is None
    b.close()
    a.close()  # pruned on close, down to CHANGE_LOG_KEEP generations


# -- the CLI on real photos ---------------------------------------------------------------------------------
@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEPRINT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEPRINT_KEY", KEY.hex())
    monkeypatch.delenv("FACEPRINT_SERVICE_DB", raising=False)
    return tmp_path / "home"


def test_cli_purposes_receipts_withdrawal_and_access(cli_home: Path, tmp_path: Path) -> None:
    cli = CliRunner()
    hog = ["--detector", "hog"]
    ada, bob = identity_photos("person01"), identity_photos("person02")

    def run(*args: str) -> tuple[int, str, str]:
        r = cli.invoke(cli_app, list(args))
        return r.exit_code, r.stdout, r.stderr

    code, _, err = run("enroll", "--subject", "ada", *map(str, ada[:2]), "--consent-by", "ada",
                       "--consent-purpose", "access-control,attendance", *hog)  # fmt: skip
    assert code == 0, err
    code, _, err = run("enroll", "--subject", "bob", *map(str, bob[:2]), *hog)
    assert code == 0, err
    code, _, err = run("enroll", "--subject", "cyd", *map(str, bob[:1]), "--consent-by", "c",
                       "--consent-purpose", "payroll", *hog)  # fmt: skip
    assert code == 2 and "unknown purpose 'payroll'" in err and "access-control, attendance" in err

    code, out, _ = run("identify", str(ada[2]), str(bob[2]), "--purpose", "attendance", "--json", *hog)
    assert code == 0
    matches = [face["match"] for image in json.loads(out) for face in image["faces"]]
    assert matches == ["ada", None]  # bob gave no consent: not searched for attendance
    code, _, err = run("identify", str(ada[2]), "--purpose", "marketing", *hog)
    assert code == 2 and "unknown purpose 'marketing'" in err

    code, out, err = run("gallery", "policy", "--retention", "30d", "--json")
    assert code == 0, err
    assert json.loads(out)["retention_days"] == 30
    code, _, err = run("gallery", "policy", "--retention", "soon")
    assert code == 2 and "invalid retention 'soon'" in err

    code, out, _ = run("subjects", "export-personal-data", "ada")
    assert code == 0
    data = json.loads(out)
    assert data["subject"]["consent"]["purposes"] == ["access-control", "attendance"]
    assert len(data["faces"]) == 2 and all(len(f["source_sha256"]) == 64 for f in data["faces"])
    assert '"vector' not in out and '"embedding' not in out and '"chip"' not in out  # no such field anywhere

    code, out, err = run("subjects", "delete", "bob")
    assert code == 0, err
    receipt_id = out.rsplit("receipt ", 1)[1].strip()
    code, out, err = run("gallery", "scrub")
    assert code == 0 and out.startswith("database vacuumed, WAL truncated"), err
    saved = tmp_path / "receipt.json"
    code, _, err = run("audit", "receipt", receipt_id, "--out", str(saved))
    assert code == 0, err
    code, out, err = run("audit", "verify-receipt", str(saved))
    assert code == 0 and out.startswith(f"valid: receipt {receipt_id} — subject erasure"), err
    body = json.loads(saved.read_text())
    body["receipt"]["template_ids"] = []
    (tmp_path / "altered.json").write_text(json.dumps(body))
    code, _, err = run("audit", "verify-receipt", str(tmp_path / "altered.json"))
    assert code == 2 and "it was altered" in err
    (tmp_path / "junk.json").write_text("{")
    code, _, err = run("audit", "verify-receipt", str(tmp_path / "junk.json"))
    assert code == 2 and "junk.json: not JSON" in err
    code, _, err = run("audit", "receipt", "nope")
    assert code == 2 and "no erasure receipt with id 'nope'" in err
    code, out, _ = run("audit", "--action", "subject.delete", "--json")
    assert code == 0 and json.loads(out)[0]["detail"]["receipt"] == receipt_id

    code, out, err = run("subjects", "withdraw-consent", "ada", "--delete-faces")
    assert code == 0 and "2 face(s) deleted; receipts " in out, err
    code, out, _ = run("identify", str(ada[2]), "--json", *hog)
    assert json.loads(out)["faces"][0]["match"] is None
    code, _, err = run("enroll", "--subject", "dee", *map(str, bob[:2]), *hog)
    assert code == 0, err
    code, out, _ = run("gallery", "stats")  # dee inherited the collection's 30-day retention
    assert code == 0 and "expiring: 0 in 7 days, 1 in 30 days" in out
    (tmp_path / "new.key").write_text(bytes(range(50, 82)).hex())
    code, out, err = run("gallery", "rotate-key", "--new-key-file", str(tmp_path / "new.key"))
    assert code == 0 and out.startswith("re-encrypted 2 value(s) under key "), err  # dee's two templates
    code, _, err = run("subjects", "list")
    assert code == 2 and "wrong key" in err  # the old key (FACEPRINT_KEY) is refused now
    code, _, err = run("gallery", "rotate-key", "--new-key-file", str(tmp_path / "junk.json"))
    assert code == 2 and "does not hold a 256-bit key" in err
    code, _, err = run("keys", "create", "--scope", "recognize", "--purpose", "attendance")
    assert code == 0 and "purpose attendance" in err
    code, out, _ = run("keys", "list")
    assert code == 0 and "purpose attendance" in out
    code, _, err = run("keys", "create", "--scope", "recognize", "--purpose", "Door Access")
    assert code == 2 and "unknown purpose 'Door Access'" in err
    code, out, _ = run("audit", "rotate-signing-key")
    assert code == 0 and "receipt signing key: " in out
    code, out, err = run("audit", "verify-receipt", str(saved))  # signed by the retired key: still valid
    assert code == 0, err


# -- the service ---------------------------------------------------------------------------------------------
@pytest.fixture
def service(tmp_path: Path, hog_pipeline) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], object]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    home = tmp_path / "home"
    settings = Settings(
        home=home, gallery=home / "gallery", service_db=home / "service.sqlite3", detector="hog",
        batch_max_wait_ms=2, purge_interval_s=0.2,
    )  # fmt: skip
    app = create_app(settings, pipeline=hog_pipeline)
    with TestClient(app, raise_server_exceptions=False) as client:
        keys = {}
        for name, scopes, purpose in (
            ("admin", ["admin"], None),
            ("door", ["recognize"], "access-control"),
            ("any", ["recognize"], None),
        ):
            _, text = app.state.keys.create(scopes, name, purpose)
            keys[name] = {"Authorization": f"Bearer {text}"}
        yield client, keys, app
    mp.undo()


def _enrol(client: TestClient, keys: dict, name: str, photos: list[Path], **body: object) -> str:
    created = client.post("/v1/subjects", json={"name": name, **body}, headers=keys["admin"])
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    upload = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    assert client.post(f"/v1/subjects/{sid}/faces", files=upload, headers=keys["admin"]).status_code == 201
    return sid


def _who(client: TestClient, headers: dict, photo: Path, **data: str) -> str | None:
    r = client.post(
        "/v1/identify",
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"threshold": "0.92", **data},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return r.json()["faces"][0]["match"]


def test_service_purpose_keys_withdrawal_access_receipts_and_purge(service) -> None:
    client, keys, app = service
    ada, bob, cyd = identity_photos("person01"), identity_photos("person02"), identity_photos("person03")
    ada_id = _enrol(client, keys, "ada", ada[:2], consent={"given_by": "ada", "purposes": ["access-control"]})
    bob_id = _enrol(client, keys, "bob", bob[:2])
    assert _who(client, keys["door"], ada[2]) == "ada"
    assert _who(client, keys["door"], bob[2]) is None  # bound key: bob never consented to access-control
    assert _who(client, keys["any"], bob[2]) == "bob"
    assert _who(client, keys["any"], bob[2], purpose="access-control") is None
    r = client.post(
        "/v1/identify", files={"image": ("a.jpg", ada[2].read_bytes(), "image/jpeg")},
        data={"threshold": "0.92", "purpose": "attendance"}, headers=keys["door"],
    )  # fmt: skip
    assert r.status_code == 403 and r.json()["code"] == "purpose_bound"
    r = client.post(
        "/v1/identify", files={"image": ("a.jpg", ada[2].read_bytes(), "image/jpeg")},
        data={"threshold": "0.92", "purpose": "spying"}, headers=keys["any"],
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["code"] == "unknown_purpose" and "spying" in r.json()["detail"]
    bad = client.post(
        "/v1/subjects", json={"name": "x", "consent": {"given_by": "x", "purposes": ["spying"]}}, headers=keys["admin"]
    )
    assert bad.status_code == 422 and bad.json()["code"] == "unknown_purpose"

    access = client.get(f"/v1/subjects/{ada_id}/personal-data", headers=keys["admin"])
    assert access.status_code == 200
    data = access.json()
    assert data["subject"]["name"] == "ada" and len(data["faces"]) == 2
    assert any(e["action"] == "identify" for e in data["audit"]) and '"vector' not in access.text

    withdrawn = client.delete(f"/v1/subjects/{ada_id}/consent", headers=keys["admin"])
    assert (
        withdrawn.status_code == 200
        and withdrawn.json()["consent"]["withdrawn_at"]
        and withdrawn.json()["receipts"] == []
    )
    assert _who(client, keys["door"], ada[2]) is None and _who(client, keys["any"], ada[2]) is None

    deleted = client.delete(f"/v1/subjects/{bob_id}", headers=keys["admin"])
    assert deleted.status_code == 200
    receipt_id = deleted.json()["receipt"]["id"]
    fetched = client.get(f"/v1/erasures/{receipt_id}", headers=keys["admin"])
    assert fetched.status_code == 200 and fetched.json() == deleted.json()
    trusted = SigningKeys(app.state.erasures.keys.directory).public_keys()
    assert verify_receipt(fetched.text, trusted)["deleted"]["templates"] == 2
    assert client.get("/v1/erasures/nope", headers=keys["admin"]).status_code == 404

    # retention: the schedule (every 0.2 s here) purges an expired subject, with a receipt and an audit entry
    soon = datetime.now(UTC) + timedelta(seconds=1)
    cyd_id = _enrol(client, keys, "cyd", cyd[:1], expires_at=soon.isoformat())
    deadline = time.monotonic() + 20
    purged: list = []
    while time.monotonic() < deadline and not purged:
        time.sleep(0.3)
        purged = client.get(f"/v1/audit?action=subject.purge&subject_id={cyd_id}", headers=keys["admin"]).json()[
            "items"
        ]
    assert purged and purged[0]["endpoint"] == "retention-schedule"
    receipt = client.get(f"/v1/erasures/{purged[0]['detail']['receipt']}", headers=keys["admin"]).json()
    assert receipt["receipt"]["kind"] == "retention" and receipt["receipt"]["subject_id"] == cyd_id
    assert client.get(f"/v1/subjects/{cyd_id}", headers=keys["admin"]).status_code == 404


def test_receipt_files_are_plain_json(tmp_path: Path) -> None:
    """What an auditor gets can be checked with nothing but an Ed25519 library."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from faceprint.privacy.receipts import canonical

    signed = SigningKeys(tmp_path).sign(make_receipt(_erasure(), ReceiptFacts("subject")))
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(signed["signing_key"]["public_key"]))
    public.verify(base64.b64decode(signed["signature"]), canonical(signed["receipt"]))
