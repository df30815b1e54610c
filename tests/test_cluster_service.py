"""Face clustering over HTTP (``/v1/clusters``): real photos, the real pipeline (HOG), the service fixture of
``test_service_api``; clusters match identities, a group photo's faces stay apart, corrections hold in the
next answer, naming enrols a subject, and every client error is a 4xx problem."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from faceprint.service.clusters import ClusterStore
from faceprint.service.errors import ApiError
from tests.conftest import GROUPS, IDENTITIES
from tests.test_service_api import THRESHOLD, assert_problem, h, landscape, service  # noqa: F401 (fixture)

PEOPLE = {
    "person01": ["img27.jpg", "img28.jpg", "img43.jpg"],
    "person02": ["img50.jpg", "img51.jpg"],
    "person03": ["img53.jpg", "img55.jpg"],
}
GROUP = GROUPS / "selfie-many-people.jpg"


def parts(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


@pytest.fixture(scope="module")
def client(service) -> TestClient:  # noqa: F811
    test_client, _ = service
    state = test_client.app.state
    state.settings = replace(state.settings, max_images_per_request=12)  # this module's copy of the app only
    return test_client


@pytest.fixture(scope="module")
def clustered(client, service) -> dict:  # noqa: F811
    _, keys = service
    paths = [IDENTITIES / person / name for person, names in PEOPLE.items() for name in names]
    response = client.post(
        "/v1/clusters", files=parts(paths), data={"threshold": str(THRESHOLD)}, headers=h(keys, "recognize")
    )
    assert response.status_code == 200, response.text
    return response.json()


def person_of(photo: str) -> str:
    return next(person for person, names in PEOPLE.items() if photo in names)


def test_clusters_match_identities(clustered: dict) -> None:
    assert clustered["photos"] == 7 and clustered["threshold"] == THRESHOLD
    groups = [{person_of(f["photo"]) for f in c["faces"]} for c in clustered["clusters"]]
    assert all(len(g) == 1 for g in groups), groups  # no cluster mixes people
    assert sorted(len(c["faces"]) for c in clustered["clusters"]) == [2, 2, 3]
    assert not clustered["outliers"]
    sizes = [c["size"] for c in clustered["clusters"]]
    assert sizes == sorted(sizes, reverse=True)
    face = clustered["clusters"][0]["faces"][0]
    assert face["thumbnail"].startswith("data:image/jpeg;base64,") and len(face["box"]) == 4
    assert "@" in face["id"] and 0 < clustered["clusters"][0]["cohesion"] <= 1


def test_group_photo_faces_never_share_a_cluster(client, service) -> None:  # noqa: F811
    _, keys = service
    # Threshold -1 would merge every face; faces of one photo are cannot-linked, so each stays alone.
    response = client.post(
        "/v1/clusters", files=parts([GROUP]), data={"threshold": "-1", "min_faces": "1"}, headers=h(keys, "recognize")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["faces"] >= 3
    assert all(c["size"] == 1 for c in body["clusters"]) and len(body["clusters"]) == body["faces"]


def test_merge_and_not_this_person_hold(client, service, clustered: dict) -> None:  # noqa: F811
    _, keys = service
    cid = clustered["id"]
    by_person = {person_of(c["faces"][0]["photo"]): c for c in clustered["clusters"]}
    a, b = by_person["person02"], by_person["person03"]
    merged = client.post(f"/v1/clusters/{cid}/merge", json={"a": a["id"], "b": b["id"]}, headers=h(keys, "recognize"))
    assert merged.status_code == 200, merged.text
    wanted = {f["id"] for f in a["faces"]} | {f["id"] for f in b["faces"]}
    assert any({f["id"] for f in c["faces"]} == wanted for c in merged.json()["clusters"]), merged.json()
    assert merged.json()["constraints"]["must_link"] == 1

    big = next(c for c in merged.json()["clusters"] if {f["id"] for f in c["faces"]} == wanted)
    # (not b's representative: the merge is a must-link from it, which a cannot-link on it would replace)
    face = next(f["id"] for f in b["faces"] if f["id"] != b["representative"])
    moved = client.post(
        f"/v1/clusters/{cid}/not-this-person", json={"face": face, "cluster": big["id"]}, headers=h(keys, "recognize")
    )
    assert moved.status_code == 200, moved.text
    again = client.get(f"/v1/clusters/{cid}", headers=h(keys, "recognize")).json()
    assert again == moved.json()
    holding = next(c for c in again["clusters"] if {f["id"] for f in a["faces"]} <= {f["id"] for f in c["faces"]})
    assert face not in {f["id"] for f in holding["faces"]}  # not this person: holds
    assert {f["id"] for f in b["faces"]} - {face} <= {f["id"] for f in holding["faces"]}  # the merge: holds
    # Unknown clusters and faces are the client's to fix.
    bad = client.post(f"/v1/clusters/{cid}/merge", json={"a": 1, "b": 99}, headers=h(keys, "recognize"))
    assert_problem(bad, 422, "invalid_request")
    bad = client.post(f"/v1/clusters/{cid}/move", json={"face": "nope", "cluster": 1}, headers=h(keys, "recognize"))
    assert_problem(bad, 422, "invalid_request")


def test_name_enrols_a_subject(client, service, clustered: dict) -> None:  # noqa: F811
    _, keys = service
    cid = clustered["id"]
    current = client.get(f"/v1/clusters/{cid}", headers=h(keys, "recognize")).json()
    ada = next(c for c in current["clusters"] if all(person_of(f["photo"]) == "person01" for f in c["faces"]))
    body = {"cluster": ada["id"], "subject": "Clustered Ada"}
    assert_problem(client.post(f"/v1/clusters/{cid}/name", json=body, headers=h(keys, "recognize")), 403, "forbidden")
    response = client.post(f"/v1/clusters/{cid}/name", json=body, headers=h(keys, "enroll"))
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["subject"] == "Clustered Ada" and out["accepted"] >= 2, out
    listed = client.get("/v1/subjects", params={"name": "Clustered Ada"}, headers=h(keys, "read")).json()
    assert [s["name"] for s in listed["items"]] == ["Clustered Ada"]
    entries = client.get("/v1/audit", params={"action": "cluster.name"}, headers=h(keys, "admin")).json()["items"]
    assert entries and "thumbnail" not in str(entries) and "img27" not in str(entries)


def test_bad_input_is_4xx_problem(client, service) -> None:  # noqa: F811
    _, keys = service
    rec = h(keys, "recognize")
    assert_problem(client.post("/v1/clusters", data={"threshold": "0.9"}, files=[("x", ("x", b"", "text/plain"))],
                               headers=rec), 422, "missing_image")  # fmt: skip
    no_face = [("image", ("landscape.jpg", landscape(), "image/jpeg"))]
    body = assert_problem(client.post("/v1/clusters", files=no_face, headers=rec), 422, "no_face")
    assert "landscape.jpg" in body["detail"]
    broken = [("image", ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg"))]
    assert_problem(client.post("/v1/clusters", files=broken, headers=rec), 422, "invalid_image")
    ok = parts([IDENTITIES / "person01" / "img27.jpg"])
    assert_problem(client.post("/v1/clusters", files=ok, data={"fpir": "0.01"}, headers=rec), 422, "validation_error")
    assert_problem(client.get("/v1/clusters/0123abcd", headers=rec), 404, "not_found")
    assert_problem(client.post("/v1/clusters/0123abcd/merge", json={"a": 1, "b": 2}, headers=rec), 404, "not_found")
    assert_problem(client.post("/v1/clusters/0123abcd/merge", json=[1, 2], headers=rec), 422, "malformed_json")


def test_scopes_are_enforced(client, service, clustered: dict) -> None:  # noqa: F811
    _, keys = service
    ok = parts([IDENTITIES / "person01" / "img27.jpg"])
    assert_problem(client.post("/v1/clusters", files=ok), 401, "unauthenticated")
    assert_problem(client.post("/v1/clusters", files=ok, headers=h(keys, "read")), 403, "forbidden")
    assert_problem(client.get(f"/v1/clusters/{clustered['id']}", headers=h(keys, "read")), 403, "forbidden")
    assert_problem(client.get(f"/v1/clusters/{clustered['id']}"), 401, "unauthenticated")


def test_store_is_bounded_in_count_and_time(clustered: dict, client) -> None:
    kept = client.app.state.clusters.get(clustered["id"]).clustering
    store = ClusterStore(max_items=2, ttl_s=3600)
    added = [store.add(kept, {}, {}) for _ in range(3)]
    assert len(store) == 2
    with pytest.raises(ApiError):  # the least recently used was dropped
        store.get(added[0].id)
    assert store.get(added[2].id).id == added[2].id
    expired = ClusterStore(max_items=2, ttl_s=-1)
    gone = expired.add(kept, {}, {})
    with pytest.raises(ApiError):
        expired.get(gone.id)
