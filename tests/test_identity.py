"""The identity-safe split: grouping by face embedding (shards.identity), the identity pass over
real videos (pipeline.identity) and the audit's identity check."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from configs import load_config, to_dict
from pipeline.decode import iter_video_chunks
from pipeline.identity import identity_groups, read_identities
from pipeline.inputs import InputVideo, video_id
from pipeline.outdir import OutputDir
from shards.identity import assign_groups, close_pairs, identity_group, nearest
from shards.split import assign_split, split_group


def unit(*values: float) -> np.ndarray:
    return np.asarray([values], np.float32)


# ---------------------------------------------------------------------------------------------
# Grouping


def test_connected_components_under_the_threshold():
    new = {"a": unit(0, 0), "b": unit(0.5, 0), "c": unit(1.0, 0),   # a-b-c chain (0.5 apart)
           "d": unit(5, 5), "e": np.zeros((0, 2), np.float32)}      # d alone; e has no face
    groups = assign_groups(new, {}, threshold=0.6)
    assert groups["a"] == groups["b"] == groups["c"] == identity_group("a")
    assert groups["d"] == identity_group("d") and groups["e"] == identity_group("e")
    # Several embeddings per video: any close pair links the videos.
    groups = assign_groups({"x": np.asarray([[9, 9], [0, 0.1]], np.float32), "y": unit(0, 0)}, {}, 0.6)
    assert groups["x"] == groups["y"]


def test_new_videos_join_the_closest_known_group_and_known_groups_stay():
    known = {"old1": ("face:old1", unit(0, 0)), "old2": ("speaker:bob", unit(0.9, 0))}
    groups = assign_groups({"n1": unit(0.5, 0), "n2": unit(0.55, 0.1), "n3": unit(10, 0)}, known, 0.6)
    # n1 is 0.5 from old1 and 0.4 from bob: the closest wins for its whole component (n1-n2).
    assert groups == {"n1": "speaker:bob", "n2": "speaker:bob", "n3": "face:n3"}


def test_close_pairs_and_nearest_match_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    full = np.linalg.norm(a[:, None] - b[None], axis=-1)
    found = {(int(i), int(j)) for rows, cols, _ in close_pairs(a, b, 3.0) for i, j in zip(rows, cols)}
    assert found == {tuple(p) for p in np.argwhere(full < 3.0)}
    distances, rows = nearest(a, b)
    np.testing.assert_allclose(distances, full.min(axis=1), atol=1e-4)
    np.testing.assert_array_equal(rows, full.argmin(axis=1))


# ---------------------------------------------------------------------------------------------
# The identity pass on real videos


def cut(source: Path, dest: Path, start_s: float, end_s: float) -> Path:
    """A short re-encoded piece of a real video (its own file, different frames)."""
    with av.open(str(dest), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for chunk in iter_video_chunks(source, start_s, end_s, size=(256, 256)):
            for frame in chunk:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return dest


@pytest.fixture(scope="module")
def videos(media, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("identity_videos")
    return {"d14_a": cut(media / "lp_d14.mp4", folder / "d14_a.mp4", 0.5, 2.5),
            "d14_b": cut(media / "lp_d14.mp4", folder / "d14_b.mp4", 14.0, 16.0),
            "d14_c": cut(media / "lp_d14.mp4", folder / "d14_c.mp4", 8.0, 9.5),
            "d20": cut(media / "lp_d20.mp4", folder / "d20.mp4", 1.0, 3.0)}


@pytest.fixture(scope="module")
def cfg() -> dict:
    return to_dict(load_config("pipeline", ["identity.frames=2"]))


def test_same_person_in_two_files_lands_in_one_split(videos, cfg, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    inputs = [InputVideo(str(videos[n])) for n in ("d14_a", "d14_b", "d20")]
    groups = identity_groups(cfg, out, inputs)
    a, b, other = (groups[video_id(str(videos[n]))] for n in ("d14_a", "d14_b", "d20"))
    assert a == b and a.startswith("face:") and other != a
    stored = read_identities(out)
    assert len(stored) == 3 and all(r["n_faces"] == 2 and r["error"] is None for r in stored)
    # One person well under the 0.6 threshold (0.31-0.34 measured), two people over it (0.65-0.69).
    emb = {r["video_id"]: np.asarray(r["embeddings"]).reshape(2, -1) for r in stored}
    same = nearest(emb[video_id(str(videos["d14_a"]))], emb[video_id(str(videos["d14_b"]))])[0]
    apart = nearest(emb[video_id(str(videos["d14_a"]))], emb[video_id(str(videos["d20"]))])[0]
    assert same.max() < 0.5 and apart.min() > 0.6, (same, apart)
    # One split for the person whatever the validation share; the two people land apart at a share
    # between their groups' hash values.
    for fraction in np.linspace(0, 1, 21):
        assert assign_split(a, fraction) == assign_split(b, fraction)
    values = sorted(int.from_bytes(__import__("hashlib").sha256(g.encode()).digest()[:8], "big") / 2**64
                    for g in (a, other))
    between = (values[0] + values[1]) / 2
    assert assign_split(a, between) != assign_split(other, between)

    # A grown input: earlier groups are read back, not recomputed; a new file of the same person
    # joins the group; a speaker column still wins.
    grown = [*inputs, InputVideo(str(videos["d14_c"]))]
    regrouped = identity_groups(cfg, out, grown)
    assert {k: regrouped[k] for k in groups} == groups
    assert regrouped[video_id(str(videos["d14_c"]))] == a
    assert len(read_identities(out)) == 4 and len(out.list("identity")) == 2
    assert identity_groups(cfg, out, grown) == regrouped  # nothing new: nothing written
    assert len(out.list("identity")) == 2
    assert split_group("ann", video_id(str(videos["d14_a"])), a) == "speaker:ann"


def test_unreadable_video_keeps_its_own_group(cfg, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    out = OutputDir(str(tmp_path / "out"))
    groups = identity_groups(cfg, out, [InputVideo(str(bad))])
    assert groups == {video_id(str(bad)): f"video:{video_id(str(bad))}"}
    assert read_identities(out)[0]["error"]
    assert identity_groups({**cfg, "identity": {**cfg["identity"], "backend": "none"}}, out, []) == {}


# ---------------------------------------------------------------------------------------------
# ArcFace (InsightFace w600k_r50) on a small ONNX graph of its input and output


def tiny_arcface(path: Path, normalise_inside: bool = False, seed: int = 0) -> np.ndarray:
    """An ONNX graph with ArcFace's input (N, 3, 112, 112) and a 512-d output: 8x8 average pooling,
    then a fixed random projection of the 3x14x14 pooled image. With ``normalise_inside`` it starts
    with ``Sub`` and ``Mul`` nodes (127.5 and 1/127.5), as graphs that take raw pixels do. Returns
    the projection."""
    from onnx import TensorProto, helper, numpy_helper, save

    weight = np.random.default_rng(seed).standard_normal((3 * 14 * 14, 512)).astype(np.float32)
    nodes, first = [], "data"
    if normalise_inside:
        nodes += [helper.make_node("Sub", ["data", "mean"], ["centred"], name="Sub_0"),
                  helper.make_node("Mul", ["centred", "inv_std"], ["scaled"], name="Mul_1")]
        first = "scaled"
    nodes += [helper.make_node("AveragePool", [first], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("MatMul", ["flat", "weight"], ["fc1"])]
    inits = [numpy_helper.from_array(weight, "weight"),
             numpy_helper.from_array(np.asarray(127.5, np.float32), "mean"),
             numpy_helper.from_array(np.asarray(1 / 127.5, np.float32), "inv_std")]
    graph = helper.make_graph(nodes, "tiny_arcface",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return weight


def test_similarity_matrix_recovers_a_known_similarity_and_never_reflects():
    from models.face_identity import ARCFACE_TEMPLATE, similarity_matrix

    angle, scale, shift = np.deg2rad(23.0), 1.7, np.asarray([31.0, -12.0])
    rotation = np.asarray([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE * 2.0 + 5.0
    dst = src @ (scale * rotation).T + shift
    np.testing.assert_allclose(similarity_matrix(src, dst), np.hstack([scale * rotation, shift[:, None]]),
                               atol=1e-9)
    # Mirrored points: the best proper similarity, not a reflection (positive determinant).
    mirrored = similarity_matrix(src * [-1.0, 1.0], src)
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_five_points_from_68():
    from models.face_identity import five_points_from_68

    points = np.zeros((68, 2))
    points[36:42] = (10, 20)
    points[42:48] = (30, 20)
    points[30], points[48], points[54] = (20, 30), (12, 40), (28, 40)
    np.testing.assert_allclose(five_points_from_68(points), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
    with pytest.raises(ValueError, match="68"):
        five_points_from_68(np.zeros((106, 2)))


@pytest.mark.parametrize("normalise_inside", [False, True])
def test_arcface_preprocessing_by_hand_on_a_real_face(media, tmp_path, normalise_inside):
    """Alignment puts the face's five points on ArcFace's template; the input is RGB, scaled as the
    graph expects; the embedding is the graph's output at unit length."""
    from models.face_detectors import make_detector
    from models.face_identity import ARCFACE_TEMPLATE, ArcFaceEmbedder, five_points_from_68, make_embedder

    weight = tiny_arcface(tmp_path / "w600k_r50.onnx", normalise_inside)
    embedder = make_embedder("insightface", weights=tmp_path / "w600k_r50.onnx")
    assert isinstance(embedder, ArcFaceEmbedder) and embedder.threshold == 1.1
    assert (embedder.mean, embedder.std) == ((0.0, 1.0) if normalise_inside else (127.5, 127.5))
    frame = next(iter(iter_video_chunks(media / "lp_d14.mp4", 1.0, 1.04, size=(512, 512))))[0]
    box = make_detector("haar").detect(frame, 64)[0, :4]
    face = embedder.aligned(frame, box)
    assert face.shape == (112, 112, 3) and face.dtype == np.uint8 and face.std() > 20
    # The five points, mapped by the alignment, land within 6 px of the template (a real face is
    # not the template's shape), and the crop's centre is skin, not border.
    from models.face_identity import similarity_matrix

    five = five_points_from_68(embedder.landmarks.landmarks(frame, box))
    matrix = similarity_matrix(five, ARCFACE_TEMPLATE)
    mapped = five @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 6.0, mapped
    # By hand: (x - 127.5) / 127.5 (or raw pixels into a graph that normalises itself), 8x8 means,
    # the projection, unit length.
    pixels = face.astype(np.float64).transpose(2, 0, 1)
    scaled = (pixels - 127.5) / 127.5
    pooled = scaled.reshape(3, 14, 8, 14, 8).mean(axis=(2, 4)).reshape(-1)
    expected = pooled @ weight
    expected /= np.linalg.norm(expected)
    got = embedder.embed(frame, box)
    assert got.shape == (512,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_arcface_weights_missing_or_wrong(tmp_path):
    from models.face_identity import make_embedder
    from models.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="w600k_r50"):
        make_embedder("insightface", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="w600k_r50"):
        make_embedder("insightface", weights=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown identity backend"):
        make_embedder("facenet")


def test_identity_pass_with_the_arcface_backend(videos, cfg, tmp_path):
    """The pass records the ArcFace model and 512-d unit embeddings; the threshold is ArcFace's."""
    tiny_arcface(tmp_path / "w600k_r50.onnx")
    out = OutputDir(str(tmp_path / "out"))
    arc = {**cfg, "identity": {**cfg["identity"], "backend": "insightface",
                               "weights": str(tmp_path / "w600k_r50.onnx")}}
    inputs = [InputVideo(str(videos[n])) for n in ("d14_a", "d20")]
    groups = identity_groups(arc, out, inputs)
    assert set(groups) == {video_id(str(videos[n])) for n in ("d14_a", "d20")}
    stored = read_identities(out)
    assert [r["backend"] for r in stored] == ["insightface_w600k_r50"] * 2
    emb = np.asarray(stored[0]["embeddings"]).reshape(stored[0]["n_faces"], -1)
    assert emb.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The audit


def test_audit_flags_a_validation_face_close_to_a_training_face(tmp_path):
    import pyarrow.parquet as pq

    from manifests.checks import check_metadata, load_output
    from tests.output_fixture import build_output, write_manifest
    from manifests.schema import CLIPS

    root = build_output(tmp_path / "out").root
    path = root / "manifests" / "clips.parquet"
    rows = pq.read_table(path).to_pylist()
    kept = [r for r in rows if r["kept"]]
    train = next(r for r in kept if r["split"] == "train")
    val = next(r for r in kept if r["split"] == "val")
    rng = np.random.default_rng(0)
    face = rng.normal(size=128).astype(np.float32) * 0.1

    def audit(val_face: np.ndarray) -> list:
        for row in rows:
            row["identity_backend"], row["face_embedding"] = None, None
        for row, emb in ((train, face), (val, val_face)):
            row["identity_backend"], row["face_embedding"] = "dlib_resnet128", emb.tolist()
        write_manifest(path, rows, CLIPS)
        return [p for p in check_metadata(load_output(root)) if p.check == "identity_leak"]

    (leak,) = audit(face + 0.02)   # 0.23 apart: the same person
    assert leak.key == val["key"] and train["key"] in leak.message and "0.23" in leak.message
    assert audit(face + 0.1) == []  # 1.13 apart: different people
