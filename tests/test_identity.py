"""The identity-safe split: grouping by face embedding (shards.identity), the identity pass over
real videos (pipeline.identity) and the audit's identity check."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from configs import load_config, to_dict
from pipeline.decode import iter_video_chunks
from pipeline.identity import Identities, identity_groups, read_identities
from pipeline.inputs import InputVideo, video_id
from pipeline.outdir import OutputDir
from shards.identity import assign_groups, group_videos, identity_group, nearest, pooled
from shards.split import assign_split, split_group, split_value, unsure_videos


def unit(*values: float) -> np.ndarray:
    return np.asarray([values], np.float32)


# ---------------------------------------------------------------------------------------------
# Grouping


def test_average_linkage_does_not_chain():
    # Ten look-alikes in a row, each 0.5 from the next (under 0.6), the ends 4.5 apart: single
    # linkage made one group of them; here no group spans more than three neighbours.
    chain = {f"c{i}": unit(0.5 * i, 0) for i in range(10)}
    groups = assign_groups({**chain, "far": unit(50, 50), "none": np.zeros((0, 2), np.float32)}, {}, 0.6)
    sizes = Counter(groups[f"c{i}"] for i in range(10))
    assert max(sizes.values()) <= 3 and len(sizes) >= 4
    assert groups["far"] == identity_group("far") and groups["none"] == identity_group("none")
    # Two groups of five, 1.0 apart, with a look-alike pair 0.3 apart between them (one from each):
    # the close pair does not merge the groups.
    left = {f"l{i}": unit(0, 0.05 * i) for i in range(5)}
    right = {f"r{i}": unit(1.0, 0.05 * i) for i in range(5)}
    left["l4"], right["r4"] = unit(0.35, 0.0), unit(0.65, 0.0)
    groups = assign_groups({**left, **right}, {}, 0.6)
    assert len({groups[f"l{i}"] for i in range(4)}) == 1 and len({groups[f"r{i}"] for i in range(4)}) == 1
    assert groups["l0"] != groups["r0"]  # the look-alikes go to one side or the other


def test_a_lone_video_follows_the_group_that_holds_its_three_nearest_videos():
    # dlib's grouping threshold 0.5: a lone video follows its nearest video within 0.6, or the
    # group of its 3 nearest videos when all lie within 0.7.
    person = {f"a{i}": unit(0.02 * i, 0) for i in range(3)}
    hard = unit(0.02, 0.65)  # 0.65 from each of the person's videos
    assert len(set(assign_groups({**person, "hard": hard}, {}, 0.5).values())) == 1
    # Beside only two videos of one group (a small input's other person, 0.65-0.69 away in our
    # media) it stays alone.
    two = assign_groups({"a0": person["a0"], "a1": person["a1"], "hard": hard}, {}, 0.5)
    assert two["hard"] == identity_group("hard") and two["a0"] == two["a1"]
    # Its three nearest in two groups: alone.
    other = {f"b{i}": unit(1.3 + 0.02 * i, 0) for i in range(3)}
    split = assign_groups({**person, **other, "hard": unit(0.66, 0)}, {}, 0.5)
    assert split["hard"] == identity_group("hard") and split["a0"] != split["b0"]


def test_a_video_is_pooled_from_its_frames():
    frames = np.asarray([[0, 0], [0.2, 0], [0.4, 0], [9, 9]], np.float32)  # one stray frame
    np.testing.assert_allclose(pooled([frames])[0], frames.mean(axis=0))
    unit_frames = np.asarray([[1, 0], [0, 1]], np.float32)  # unit length: so is the pooled one
    np.testing.assert_allclose(pooled([unit_frames])[0], [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    # Two videos of one person: their frames' mean is what is compared.
    groups = assign_groups({"x": np.asarray([[0.4, 0], [0.6, 0]], np.float32), "y": unit(0, 0)}, {}, 0.6)
    assert groups["x"] == groups["y"]


def test_new_videos_join_the_closest_known_group_and_known_groups_stay():
    known = {"old1": ("face:old1", unit(0, 0)), "old2": ("speaker:bob", unit(0.9, 0)),
             "old3": ("speaker:bob", unit(0.9, 0.1))}
    groups = assign_groups({"n1": unit(0.5, 0), "n2": unit(0.55, 0.1), "n3": unit(10, 0)}, known, 0.6)
    # n1-n2 merge first (0.11 apart); as a group they are 0.38 from bob's videos on average and 0.53
    # from old1: bob's group it is. Known groups never merge with each other.
    assert groups == {"n1": "speaker:bob", "n2": "speaker:bob", "n3": "face:n3"}
    # A video between two known groups joins one of them, and the known groups stay apart.
    assert assign_groups({"m": unit(0.45, 0)}, known, 0.6)["m"] in ("face:old1", "speaker:bob")


@pytest.mark.parametrize("exact_up_to", [10_000, 100])
def test_neighbours_match_brute_force(monkeypatch, exact_up_to):
    """The exact index, and the graph index used above ``EXACT_UP_TO`` references, find
    the close pairs all-pairs distances find (clustered points, as faces are)."""
    from shards import neighbours

    monkeypatch.setattr(neighbours, "EXACT_UP_TO", exact_up_to)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 16)).astype(np.float32)
    points = (centres[rng.integers(0, 60, 3000)] + 0.05 * rng.normal(size=(3000, 16))).astype(np.float32)
    distances, rows = neighbours.knn(points, points[:200], 4)
    again = neighbours.knn(points, points[:200], 4)  # the graph index is built the same way each time
    np.testing.assert_array_equal(rows, again[1])
    full = np.linalg.norm(points[:200, None] - points[None], axis=-1)
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :4], atol=1e-3)
    np.testing.assert_allclose(np.take_along_axis(full, rows, axis=1), distances, atol=1e-3)
    a, b = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    nearest_distances, nearest_rows = nearest(a, b)
    full = np.linalg.norm(a[:, None] - b[None], axis=-1)
    np.testing.assert_allclose(nearest_distances, full.min(axis=1), atol=1e-4)
    np.testing.assert_array_equal(nearest_rows, full.argmin(axis=1))


@pytest.mark.parametrize("world, backend", [("dlib", "dlib"), ("arcface", "insightface")])
def test_a_calibrated_world_of_300_people_splits_by_person(world, backend):
    """300 people with 1-8 videos of 4 frames, embeddings calibrated to the backend's published
    verification figures (``bench/identity_world.py``), grouped at the backend's default
    threshold: the largest group stays small, and nobody has videos on both sides of a 10 % split."""
    from bench.identity import score
    from bench.identity_world import make_world
    from models.face_identity import identity_threshold

    people = make_world(world, 300, seed=3)
    ids = [f"v{i:05d}" for i in range(len(people.person))]
    grouping = group_videos(dict(zip(ids, people.frames)), {}, identity_threshold(backend))
    left_out = unsure_videos(grouping.rivals, grouping.groups, 0.1)
    figures = score(people.person, [grouping.groups[i] for i in ids], 0.1, np.asarray([i in left_out for i in ids]))
    assert figures["largest_group_share"] <= 0.01, figures
    assert figures["people_in_both_splits"] == 0, figures
    assert figures["left_out_share"] <= 0.04, figures
    assert figures["groups"] >= 200, figures  # not one group, nor a few


def test_a_lone_video_as_near_to_groups_on_both_sides_is_in_neither_split():
    """A video alone after the merges whose nearest videos, within 1.05 x the nearest, lie in
    groups the split sends to both sides is left out; on one side, it stays; among more equally
    near videos than it saw, it is left out whatever their sides."""
    a = {f"a{i}": unit(0.05 * i, 0) for i in range(3)}
    b = {f"b{i}": unit(1.2 + 0.05 * i, 0) for i in range(3)}
    lone = {"lone": unit(0.65, 0.9)}  # 1.03 from a2, 1.00 from b0: alone, near both
    grouping = group_videos({**a, **b, **lone}, {}, 0.6)
    groups = grouping.groups
    assert groups["a0"] == groups["a2"] != groups["b0"] == groups["b2"] and groups["lone"] == "face:lone"
    assert grouping.rivals == {"lone": frozenset({groups["a0"], groups["b0"]})}
    values = sorted(split_value(g) for g in (groups["a0"], groups["b0"], "face:lone"))
    assert set(unsure_videos(grouping.rivals, groups, (values[0] + values[1]) / 2)) == {"lone"}
    assert set(unsure_videos(grouping.rivals, groups, (values[1] + values[2]) / 2)) == {"lone"}
    assert unsure_videos(grouping.rivals, groups, values[0] / 2) == {}  # all train
    assert unsure_videos(grouping.rivals, groups, 0.0) == {} and unsure_videos(grouping.rivals, groups, 1.0) == {}
    # Nearer one group by more than 5 %: its only rival is that group's... none across.
    near_a = group_videos({**a, **b, "lone": unit(0.3, 0.9)}, {}, 0.6)
    assert near_a.rivals["lone"] <= {near_a.groups["a0"]}
    # Twelve videos 1.0 away in twelve directions, 1.41 from each other: it saw 10 of them, all as
    # near; it cannot be placed.
    spokes = {f"s{i:02d}": np.eye(13, dtype=np.float32)[i:i + 1] for i in range(12)}
    crowded = group_videos({**spokes, "hub": np.zeros((1, 13), np.float32)}, {}, 0.6)
    assert crowded.rivals["hub"] is None
    assert set(unsure_videos(crowded.rivals, crowded.groups, 0.5)) >= {"hub"}


def test_guard_stops_on_one_large_face_group(caplog):
    from pipeline.identity_guard import GroupShareError, check_group_share

    cfg = {"identity": {"max_group_share": 0.05, "guard_min_videos": 200}}
    chained = {f"v{i}": "face:v0" if i < 20 else f"face:v{i}" for i in range(300)}  # 6.7 %
    with caplog.at_level("INFO"):
        with pytest.raises(GroupShareError) as error:
            check_group_share(cfg, chained)
    message = str(error.value)
    assert "\n" not in message and "6.7%" in message and "identity.max_group_share" in message
    for remedy in ("insightface", "identity.threshold", "speaker", "identity.backend=none"):
        assert remedy in message
    assert "300 videos in 281 groups" in caplog.text
    # Under the limit, on a small input, or a speaker's own group: the run goes on.
    assert check_group_share(cfg, {**chained, **{f"v{i}": f"face:v{i}" for i in range(6)}})["groups"] == 286
    assert check_group_share(cfg, dict(list(chained.items())[:150]))["largest_group_share"] > 0.05
    speakers = {v: ("speaker:ann" if g == "face:v0" else g) for v, g in chained.items()}
    assert check_group_share(cfg, speakers)["largest_group"] == "speaker:ann"
    assert check_group_share({"identity": {**cfg["identity"], "max_group_share": 0.1}}, chained)


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
    found = identity_groups(cfg, out, inputs)
    groups = found.groups
    a, b, other = (groups[video_id(str(videos[n]))] for n in ("d14_a", "d14_b", "d20"))
    assert a == b and a.startswith("face:") and other != a
    # d20 is alone, its nearest videos both d14's (0.65-0.69): left out of both splits exactly
    # when its group and d14's lie on different sides (the ids, so the sides, follow tmp paths).
    fraction = cfg["split"]["val_fraction"]
    apart_sides = assign_split(a, fraction) != assign_split(other, fraction)
    assert set(found.left_out) == ({video_id(str(videos["d20"]))} if apart_sides else set()), found.left_out
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
    values = sorted(split_value(g) for g in (a, other))
    between = (values[0] + values[1]) / 2
    assert assign_split(a, between) != assign_split(other, between)

    # A grown input: earlier groups are read back, not recomputed; a new file of the same person
    # joins the group; a speaker column still wins.
    grown = [*inputs, InputVideo(str(videos["d14_c"]))]
    regrouped = identity_groups(cfg, out, grown).groups
    assert {k: regrouped[k] for k in groups} == groups
    assert regrouped[video_id(str(videos["d14_c"]))] == a
    assert len(read_identities(out)) == 4 and len(out.list("identity")) == 2
    again = identity_groups(cfg, out, grown)  # nothing new: nothing written, the decisions kept
    assert again.groups == regrouped and set(again.left_out) == set(found.left_out)
    assert len(out.list("identity")) == 2
    assert split_group("ann", video_id(str(videos["d14_a"])), a) == "speaker:ann"


def test_unreadable_video_keeps_its_own_group(cfg, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    out = OutputDir(str(tmp_path / "out"))
    groups = identity_groups(cfg, out, [InputVideo(str(bad))]).groups
    assert groups == {video_id(str(bad)): f"video:{video_id(str(bad))}"}
    assert read_identities(out)[0]["error"]
    assert identity_groups({**cfg, "identity": {**cfg["identity"], "backend": "none"}}, out, []) == Identities()


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
    groups = identity_groups(arc, out, inputs).groups
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


def test_audit_fails_when_validation_got_nothing_and_shows_the_groups(tmp_path):
    import json

    import pyarrow.parquet as pq

    from manifests.checks import check_metadata, load_output
    from manifests.report import render_report
    from manifests.schema import CLIPS
    from manifests.summary import format_summary, summarise
    from tests.output_fixture import build_output, write_manifest

    root = build_output(tmp_path / "out").root

    def val_share_problems() -> list:
        return [p for p in check_metadata(load_output(root)) if p.check == "val_share"]

    assert val_share_problems() == []  # run.json names no split.val_fraction
    run = json.loads((root / "run.json").read_text())
    run["config"].update(split={"val_fraction": 0.1}, identity={"guard_min_videos": 6})
    (root / "run.json").write_text(json.dumps(run))
    assert val_share_problems() == []  # the fixture's validation holds clips
    path = root / "manifests" / "clips.parquet"
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["split"], row["split_group"] = "train", "face:one"  # one group took every video
    write_manifest(path, rows, CLIPS)
    (problem,) = val_share_problems()
    assert "split.val_fraction is 0.1" in problem.message and "6 videos in 1 split groups" in problem.message
    assert "(face:one) holding 100.0%" in problem.message
    run["config"]["identity"]["guard_min_videos"] = 7  # below the size where a share means something
    (root / "run.json").write_text(json.dumps(run))
    assert val_share_problems() == []

    output = load_output(root)
    summary = summarise(output)
    assert summary["split_groups"]["groups"] == 1 and summary["split_groups"]["largest_group_share"] == 1.0
    assert summary["split_groups"]["sizes"] == {"4-7": 1}
    assert summary["split_groups"]["largest"] == [{"group": "face:one", "videos": 6, "share": 1.0, "split": "train"}]
    assert "Split groups: 6 videos in 1 groups, the largest holding 100.0%" in format_summary(summary)
    html = render_report(output, summary)
    assert "<h3>Split groups</h3>" in html and "face:one" in html
