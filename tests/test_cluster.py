"""Face clustering (issue #20) on real photos and the real default model: the algorithm, cannot-links, feedback
that survives a rerun, incremental assignment, naming into a gallery, the metrics and the CLI."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

import faceprint
from faceprint.cli import app
from faceprint.cluster import Clustering, Constraints, Face, FaceSet, assign, cluster, faces_from_images, feedback
from faceprint.cluster import core as cluster_core
from faceprint.errors import InvalidArgument
from faceprint.evaluation.clustering import clustering_scores, contingency
from faceprint.gallery import open_gallery
from tests.conftest import GROUPS, IDENTITIES, identity_photos

#: BCubed F1 of the 9 identities' faces at FMR 1e-3 (dlib-resnet-v1), every face of every photo labelled by its
#: folder: measured 0.962 (precision 1.0; the misses are two bystanders in person04's photos, rightly kept apart,
#: and a person with one photo). Pinned just below.
BCUBED_F1_FLOOR = 0.95


@pytest.fixture(scope="module")
def library(pipeline, tmp_path_factory: pytest.TempPathFactory) -> FaceSet:
    photos = sorted(IDENTITIES.glob("*/*.jpg"))
    return faces_from_images(photos, pipeline, cache=tmp_path_factory.mktemp("cluster") / "faces.npz")


@pytest.fixture(scope="module")
def clustered(library: FaceSet) -> Clustering:
    return cluster(list(library.faces), model_id=library.model_id, fmr=1e-3)


def _person(face: Face) -> str:
    return Path(str(face.path)).parent.name


def test_identities_cluster_into_people(library: FaceSet, clustered: Clustering) -> None:
    truth = np.array([_person(f) for f in library.faces])
    scores = clustering_scores(truth, clustered.labels, outlier_label=0)
    assert scores.bcubed_f1 >= BCUBED_F1_FLOOR, scores
    assert clustered.threshold == pytest.approx(0.929, abs=0.002)  # the model's score at FMR 1e-3 (mirrored chip)
    assert [c.size for c in clustered.clusters] == sorted((c.size for c in clustered.clusters), reverse=True)
    for c in clustered.clusters:
        assert c.members[0] == c.representative and 0.9 < c.cohesion <= 1.0


def test_module_level_cluster_on_faceprints(pipeline) -> None:
    photos = identity_photos("person01")[:3] + identity_photos("person02")[:3]
    prints, images = [], []
    for photo in photos:
        for fp in pipeline.embed(photo):
            prints.append(fp)
            images.append(photo.name)
    result = faceprint.cluster(prints, images=images)
    assert isinstance(result, Clustering) and len(result.clusters) == 2
    assert {len(c.members) for c in result.clusters} == {3}


def test_faces_of_one_photo_never_share_a_cluster(pipeline) -> None:
    found = faces_from_images([GROUPS / "selfie-many-people.jpg"], pipeline)
    assert len(found.faces) >= 5
    # A threshold of -1 would put every face in one cluster; the cannot-link keeps them apart.
    result = cluster(list(found.faces), model_id=found.model_id, threshold=-1.0, min_faces=1)
    assert len(set(result.labels.tolist())) == len(found.faces)
    for method in ("complete", "hdbscan"):
        other = cluster(list(found.faces), model_id=found.model_id, threshold=-1.0, min_faces=1, method=method)
        assert len(set(other.labels.tolist())) == len(found.faces)


def _cluster_of(result: Clustering, face_id: str) -> int:
    return int(result.labels[result.index_of(face_id)])


def test_merge_and_cannot_link_survive_a_rerun(library: FaceSet, clustered: Clustering, tmp_path: Path) -> None:
    a, b = clustered.clusters[0], clustered.clusters[1]
    rep_a, rep_b = (clustered.faces[c.representative].id for c in (a, b))
    merged = feedback.merge(clustered, a.id, b.id)
    assert _cluster_of(merged, rep_a) == _cluster_of(merged, rep_b) != 0
    # not this person: a face of the merged cluster is not the person of another of its faces
    other = next(clustered.faces[i].id for i in a.members if clustered.faces[i].id != rep_a)
    corrected = feedback.not_this_person(merged, other, _cluster_of(merged, rep_a))
    assert _cluster_of(corrected, other) != _cluster_of(corrected, rep_a)

    path = tmp_path / "clusters.json"
    feedback.save(corrected, path, fmr=1e-3)
    rerun = cluster(list(library.faces), model_id=library.model_id, fmr=1e-3,
                    constraints=feedback.load_constraints(path))  # fmt: skip
    assert _cluster_of(rerun, rep_a) == _cluster_of(rerun, rep_b) != 0
    assert _cluster_of(rerun, other) != _cluster_of(rerun, rep_a)
    # the saved file reloads as it was
    reloaded = feedback.load(path, library.faces)
    assert reloaded.labels.tolist() == corrected.labels.tolist()
    assert reloaded.constraints == corrected.constraints


def test_split_and_move(clustered: Clustering) -> None:
    big = clustered.clusters[0]
    ids = [clustered.faces[i].id for i in big.members]
    split = feedback.split(clustered, big.id, ids[:2])
    assert _cluster_of(split, ids[0]) == _cluster_of(split, ids[1])
    assert _cluster_of(split, ids[0]) != _cluster_of(split, ids[2])
    target = clustered.clusters[1]
    moved = feedback.move(clustered, ids[-1], target.id)
    rep = clustered.faces[target.representative].id
    assert _cluster_of(moved, ids[-1]) == _cluster_of(moved, rep)
    assert _cluster_of(moved, ids[0]) != _cluster_of(moved, rep)
    with pytest.raises(InvalidArgument, match="no cluster 999"):
        feedback.merge(clustered, big.id, 999)


def test_latest_feedback_about_a_pair_wins() -> None:
    c = Constraints().add(must=[("a", "b")]).add(cannot=[("b", "a")])
    assert c.must == () and c.cannot == (("a", "b"),)


def test_assign_adds_faces_without_reclustering(library: FaceSet) -> None:
    faces = list(library.faces)
    old = [f for f in faces if not f.path or not f.path.endswith(("img46.jpg", "img51.jpg"))]
    new = [f for f in faces if f not in old]
    assert new
    base = cluster(old, model_id=library.model_id, fmr=1e-3)
    grown = assign(base, new)
    assert len(grown.faces) == len(faces)
    for face in new:
        label = _cluster_of(grown, face.id)
        assert label != 0
        mates = {_person(grown.faces[i]) for i in grown.cluster(label).members}
        assert mates == {_person(face)}


def test_name_enrols_the_cluster_into_a_gallery(clustered: Clustering, pipeline, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    gallery = open_gallery(tmp_path / "gallery")
    target = clustered.clusters[0]
    report = feedback.name(clustered, target.id, "alice", gallery, pipeline)
    assert len(report.accepted) + len(report.rejected) == len({clustered.faces[i].path for i in target.members})
    assert report.accepted and report.subject is not None and report.subject.name == "alice"
    subject = gallery.find_subject("alice")
    assert subject is not None
    assert len(gallery.list_templates(subject.id)) == len(report.accepted)


def test_metrics_against_a_hand_computed_example() -> None:
    # truth: A A A B B C ; predicted: 1 1 2 2 2 outlier
    truth = np.array(["A", "A", "A", "B", "B", "C"])
    pred = np.array([1, 1, 2, 2, 2, 0])
    table = contingency(truth, pred, outlier_label=0)
    assert table.sum() == 6 and table.shape == (3, 3)
    s = clustering_scores(truth, pred, outlier_label=0)
    # pairs together: C(2,2)+C(3,2) = 1+3 = 4, of which same person: (A,A) in 1, (B,B) in 2 → 2
    # pairs of one person: C(3,2)+C(2,2) = 3+1 = 4
    assert s.pairwise_precision == pytest.approx(2 / 4)
    assert s.pairwise_recall == pytest.approx(2 / 4)
    # BCubed precision per face: 1,1 (cluster 1 all A), 1/3, 2/3, 2/3 (cluster 2: A B B), 1 (alone) → 14/3 / 6
    assert s.bcubed_precision == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3 + 1) / 6)
    # BCubed recall per face: 2/3, 2/3, 1/3 (A split 2+1), 1, 1 (B whole), 1 (C) → (5/3 + 3) / 6
    assert s.bcubed_recall == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1 + 1) / 6)
    assert (s.clusters, s.singletons, s.identities) == (2, 1, 3)
    assert s.singleton_rate == pytest.approx(1 / 6)


# -- CLI ------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def test_cli_writes_clusters_and_contact_sheet_and_takes_feedback(cli, cache_dir, tmp_path: Path, monkeypatch) -> None:
    photos = [*identity_photos("person02")[:3], *identity_photos("person03")[:3]]
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    r = cli.invoke(app, ["cluster", *map(str, photos), str(corrupt), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 clusters" in r.output and "skipped" in r.output and "broken.jpg" in r.output
    data = json.loads((out / "clusters.json").read_text())
    assert [c["size"] for c in data["clusters"]] == [3, 3]
    sheet = (out / "index.html").read_text()
    assert sheet.count("<section>") == 2 and "cohesion" in sheet
    assert len(list((out / "faces").glob("*.jpg"))) == 6

    # a rerun with another threshold reuses the cached embeddings: no detection at all
    def no_detect(*args, **kwargs):
        raise AssertionError("detected again")

    monkeypatch.setattr(faceprint.Pipeline, "detect", no_detect)
    r = cli.invoke(app, ["cluster", *map(str, photos), "--out", str(out), "--fmr", "1e-4", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rule"] == "FMR 1.0e-04"

    r = cli.invoke(app, ["cluster", "merge", str(out), "1", "2"])
    assert r.exit_code == 0, r.output
    assert "1 clusters" in r.output
    assert json.loads((out / "clusters.json").read_text())["constraints"]["must_link"]
    # the merge sticks on a rerun
    r = cli.invoke(app, ["cluster", *map(str, photos), "--out", str(out), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)["clusters"]) == 1, r.output


def test_cli_bad_input(cli, cache_dir, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli.invoke(app, ["cluster", str(empty), "--out", str(tmp_path / "o1")])
    assert r.exit_code == 2 and "no photos" in r.output

    blank = tmp_path / "blank.jpg"
    PILImage.new("RGB", (320, 240), (200, 200, 200)).save(blank)
    r = cli.invoke(app, ["cluster", str(blank), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "no faces found" in r.output

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    r = cli.invoke(app, ["cluster", str(corrupt), str(blank), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 2 and "no faces found in 2 photo(s)" in r.output

    r = cli.invoke(app, ["cluster", str(identity_photos("person01")[0]), "--out", str(tmp_path / "o4")])
    assert r.exit_code == 2 and "only one face" in r.output

    r = cli.invoke(app, ["cluster", "merge", str(tmp_path / "nothing"), "1", "2"])
    assert r.exit_code == 2 and "no saved clustering" in r.output

    r = cli.invoke(app, ["cluster", str(blank), "--fmr", "1e-3", "--threshold", "0.9"])
    assert r.exit_code == 2


def test_library_bad_input() -> None:
    with pytest.raises(InvalidArgument, match="model_id"):
        cluster([Face("a", "x", np.ones(4, np.float32))])
    with pytest.raises(InvalidArgument, match="method"):
        cluster([], model_id="dlib-resnet-v1", method="kmeans")
    one = cluster([Face("a", "x", np.ones(4, np.float32))], model_id="dlib-resnet-v1")
    assert one.clusters == () and one.outliers == [0]


def test_sparse_path_matches_the_dense_one(library: FaceSet, clustered: Clustering, monkeypatch) -> None:
    # Above MAX_DENSE faces no N×N matrix is built: average linkage on group sums over a neighbour graph.

    monkeypatch.setattr(cluster_core, "MAX_DENSE", 10)
    sparse = cluster(list(library.faces), model_id=library.model_id, fmr=1e-3)
    assert clustering_scores(clustered.labels, sparse.labels).bcubed_f1 == pytest.approx(1.0)
    with pytest.raises(InvalidArgument, match="only average linkage"):
        cluster(list(library.faces), model_id=library.model_id, method="complete")


def test_name_refuses_group_photos_where_the_person_is_not_dominant(pipeline, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    found = faces_from_images([GROUPS / "selfie-many-people.jpg"], pipeline)
    result = cluster(list(found.faces), model_id=found.model_id, threshold=-1.0, min_faces=1)
    smallest = min(result.clusters, key=lambda c: result.faces[c.members[0]].box[2] - result.faces[c.members[0]].box[0])
    report = feedback.name(result, smallest.id, "bystander", open_gallery(tmp_path / "g"), pipeline)
    assert not report.accepted and "not the dominant one" in report.rejected[0].reasons[0]
