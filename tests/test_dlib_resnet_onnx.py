"""dlib's ResNet on ONNX Runtime: our .dat reader, the graph's parity with dlib, batching and the cache."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from faceprint.embed.base import Embedder
from faceprint.embed.dlib_resnet import _CHANNEL_MEANS, DlibResNetEmbedder, preprocess
from faceprint.errors import InvalidImage, ModelError
from faceprint.models.catalogue import model_path, sha256_file
from faceprint.models.convert import cached_paths, converted_model
from faceprint.models.dlib_format import DlibFormatError, affine_params, parse_network, read_network
from faceprint.models.dlib_resnet_onnx import CONVERTER_VERSION
from tests.conftest import IDENTITIES

# Small photos, one or two per identity, so HOG detection stays fast.
PARITY_PHOTOS = [
    "person01/img27.jpg",
    "person02/img50.jpg",
    "person02/img51.jpg",
    "person03/img56.jpg",
    "person04/img62.jpg",
    "person04/img61.jpg",
    "person06/img29.jpg",
    "person07/img38.jpg",
]


# ---------------------------------------------------------------------------------------------- parser


def test_reads_the_resnet_file() -> None:
    records = read_network(model_path("dlib-resnet-v1"))
    assert len(records) == 132
    assert records[0].kind == "input_rgb_image_sized"
    assert (records[0].attrs["nr"], records[0].attrs["nc"]) == (150, 150)
    means = tuple(records[0].attrs[k] for k in ("avg_red", "avg_green", "avg_blue"))
    assert means == tuple(float(np.float32(m)) for m in _CHANNEL_MEANS)  # the embedder's constants
    assert records[-1].kind == "loss_metric"
    assert Counter(r.kind for r in records) == {
        "con": 29,
        "affine": 29,
        "relu": 29,
        "tag_or_skip": 22,
        "add_prev": 14,
        "avg_pool": 5,
        "max_pool": 1,
        "fc": 1,
        "input_rgb_image_sized": 1,
        "loss_metric": 1,
    }
    convs = [r for r in records if r.kind == "con"]
    assert convs[0].params["weight"].shape == (32, 3, 7, 7)
    assert [c.attrs["num_filters"] for c in convs].count(256) == 8
    weights = [c.params["weight"] for c in convs]
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in weights)
    fc = records[-2]
    assert fc.kind == "fc" and fc.params["weight"].shape == (256, 128) and not fc.attrs["has_bias"]


def test_reads_the_mmod_file() -> None:
    records = read_network(model_path("dlib-mmod"))
    assert [r.kind for r in records] == [
        "input_rgb_image_pyramid",
        *["con", "bn_con", "relu"] * 6,
        "con",
        "loss_mmod",
    ]
    assert [r.attrs["num_filters"] for r in records if r.kind == "con"] == [16, 32, 32, 45, 45, 45, 1]
    assert [r.attrs["stride_y"] for r in records if r.kind == "con"] == [2, 2, 2, 1, 1, 1, 1]
    assert records[-2].attrs["padding_y"] == 4
    windows = records[-1].attrs["detector_windows"]
    assert windows == [{"width": 80, "height": 80, "label": ""}]
    scale, shift = affine_params(records[2])
    assert scale.shape == shift.shape == (16,) and np.isfinite(scale).all()


def test_rejects_truncated_and_foreign_files() -> None:
    data = model_path("dlib-mmod").read_bytes()
    with pytest.raises(DlibFormatError, match="end of data"):
        parse_network(data[: len(data) // 2])
    with pytest.raises(DlibFormatError):
        parse_network(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(DlibFormatError):  # a dlib file, but a shape predictor, not a network
        parse_network(model_path("dlib-shape5").read_bytes()[:4096])


# ---------------------------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def embedder(cache_dir: Path) -> DlibResNetEmbedder:
    return DlibResNetEmbedder(threads=2)


@pytest.fixture(scope="module")
def dlib_chips():
    """Aligned chips exactly as dlib makes them, with dlib's own descriptors for them."""
    dlib = pytest.importorskip("dlib")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path("dlib-shape5")))
    net = dlib.face_recognition_model_v1(str(model_path("dlib-resnet-v1")))
    chips, refs = [], []
    for name in PARITY_PHOTOS:
        img = np.asarray(Image.open(IDENTITIES / name).convert("RGB"))
        faces = detector(img, 0)
        assert len(faces) == 1, name
        chip = dlib.get_face_chip(img, predictor(img, faces[0]), 150, 0.25)
        chips.append(chip)
        refs.append(np.asarray(net.compute_face_descriptor(chip), dtype=np.float64))
    refs_arr = np.stack(refs)
    return np.stack(chips), refs_arr / np.linalg.norm(refs_arr, axis=1, keepdims=True)


def test_preprocessing_is_dlibs_input_layer() -> None:
    chips = np.random.default_rng(0).integers(0, 256, size=(2, 150, 150, 3), dtype=np.uint8)
    expected = (chips.astype(np.float32) - np.array(_CHANNEL_MEANS, np.float32)) / np.float32(256)
    np.testing.assert_array_equal(preprocess(chips), expected.transpose(0, 3, 1, 2))


def test_matches_dlib_descriptors(embedder: DlibResNetEmbedder, dlib_chips) -> None:
    chips, refs = dlib_chips
    ours = embedder.embed_chips(chips)
    assert ours.shape == (len(chips), 128) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(ours.astype(np.float64) * refs, axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert np.abs(ours - refs).max() < 1e-4  # measured ~2e-7: the same network, not an approximation
    # Different people stay apart, the same person close (sanity that chips are not all alike).
    assert float(ours[1] @ ours[2]) > float(ours[0] @ ours[1])


def test_batch_rows_equal_single_calls(embedder: DlibResNetEmbedder, dlib_chips) -> None:
    chips, _ = dlib_chips
    batch = embedder.embed_chips(chips)
    singles = np.concatenate([embedder.embed_chips(chips[i : i + 1]) for i in range(len(chips))])
    np.testing.assert_allclose(batch, singles, atol=2e-6)


def test_large_batches_are_split_into_runs(
    embedder: DlibResNetEmbedder, dlib_chips, monkeypatch: pytest.MonkeyPatch
) -> None:
    chips, _ = dlib_chips
    expected = embedder.embed_chips(chips)
    sizes: list[int] = []
    run = embedder.session.run

    def counting_run(outputs, feeds):
        sizes.append(len(next(iter(feeds.values()))))
        return run(outputs, feeds)

    monkeypatch.setattr(embedder, "session", _SessionProxy(embedder.session, counting_run))
    monkeypatch.setattr(embedder, "max_batch", 3)
    out = embedder.embed_chips(chips)
    assert sizes == [3, 3, 2]
    np.testing.assert_allclose(out, expected, atol=2e-6)


class _SessionProxy:
    def __init__(self, session, run) -> None:
        self._session = session
        self.run = run


def test_concurrent_calls_agree(embedder: DlibResNetEmbedder, dlib_chips) -> None:
    chips, _ = dlib_chips
    expected = embedder.embed_chips(chips[:2])
    results: list[np.ndarray] = []

    def work() -> None:
        results.append(embedder.embed_chips(chips[:2]))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for r in results:
        np.testing.assert_allclose(r, expected, atol=2e-6)


def test_empty_and_bad_inputs(embedder: DlibResNetEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.embed_chips(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(InvalidImage):
        embedder.embed_chips(np.zeros((1, 112, 112, 3), np.uint8))
    with pytest.raises(InvalidImage):
        embedder.embed_chips(np.zeros((1, 150, 150, 3), np.float32))


# ---------------------------------------------------------------------------------------------- cache


def _tiny_builder(calls: list[Path]):
    """A stand-in converter: an Identity graph, so cache tests need not build the ResNet."""

    def build(source: Path) -> onnx.ModelProto:
        calls.append(source)
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    return build


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEPRINT_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_cache_converts_once(tmp_cache: Path) -> None:
    calls: list[Path] = []
    first = converted_model("dlib-resnet-v1", _tiny_builder(calls), version="t1")
    assert first.parent == tmp_cache / "models" and first.is_file()
    assert calls == [model_path("dlib-resnet-v1")]
    mtime = first.stat().st_mtime_ns
    second = converted_model("dlib-resnet-v1", _tiny_builder(calls), version="t1")
    assert second == first and len(calls) == 1 and first.stat().st_mtime_ns == mtime
    meta = json.loads(cached_paths("dlib-resnet-v1", "t1")[1].read_text())
    assert meta["onnx_sha256"] == sha256_file(first)
    # A new converter version is a new cache entry.
    other = converted_model("dlib-resnet-v1", _tiny_builder(calls), version="t2")
    assert other != first and len(calls) == 2
    assert not list(tmp_cache.glob("models/*.tmp"))


@pytest.mark.parametrize("damage", ["onnx", "sidecar", "missing-sidecar"])
def test_corrupt_cache_is_rebuilt(tmp_cache: Path, damage: str) -> None:
    calls: list[Path] = []
    path = converted_model("dlib-resnet-v1", _tiny_builder(calls), version="t1")
    good = path.read_bytes()
    sidecar = cached_paths("dlib-resnet-v1", "t1")[1]
    if damage == "onnx":
        path.write_bytes(good[:-3] + b"\x00\x00\x00")
    elif damage == "sidecar":
        sidecar.write_text("{not json")
    else:
        sidecar.unlink()
    again = converted_model("dlib-resnet-v1", _tiny_builder(calls), version="t1")
    assert again == path and len(calls) == 2
    assert path.read_bytes() == good
    assert json.loads(sidecar.read_text())["onnx_sha256"] == sha256_file(path)


def test_concurrent_conversions_leave_a_valid_file(tmp_cache: Path) -> None:
    calls: list[Path] = []
    builder = _tiny_builder(calls)
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(converted_model("dlib-resnet-v1", builder, version="c")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1
    meta = json.loads(cached_paths("dlib-resnet-v1", "c")[1].read_text())
    assert meta["onnx_sha256"] == sha256_file(paths[0])
    onnx.checker.check_model(onnx.load(paths[0]))
    assert not list(tmp_cache.glob("models/*.tmp"))


def test_builder_failure_is_a_model_error(tmp_cache: Path) -> None:
    def broken(source: Path) -> onnx.ModelProto:
        raise ValueError("boom")

    with pytest.raises(ModelError, match="boom"):
        converted_model("dlib-resnet-v1", broken, version="x")
    assert not list(tmp_cache.glob("models/*.onnx"))


def test_real_conversion_is_cached_and_reloaded(tmp_cache: Path) -> None:
    first = DlibResNetEmbedder(threads=1)
    path = cached_paths("dlib-resnet-v1", CONVERTER_VERSION)[0]
    assert path.is_file()
    mtime = path.stat().st_mtime_ns
    second = DlibResNetEmbedder(threads=1)
    assert path.stat().st_mtime_ns == mtime
    chip = np.full((1, 150, 150, 3), 128, np.uint8)
    np.testing.assert_array_equal(first.embed_chips(chip), second.embed_chips(chip))
