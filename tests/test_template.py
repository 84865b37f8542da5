"""LivePortrait motion templates: structure of the real ones, round trips, old key names."""
import pickle

import numpy as np
import pytest

from shards.pose import rotation_matrix, transform_keypoints
from shards.vector import VECTOR_DIM
from training.template import (
    EYE_KEYPOINTS,
    LIP_KEYPOINTS,
    atomic_output,
    load_template,
    motion_template,
    n_frames_for,
    neutral_canonical_kp,
    resample_vector,
    save_template,
    save_vector,
    template_to_vector,
)

REAL = ("d5", "d7", "talking")
FRAME_SHAPES = {"scale": (1, 1), "R": (1, 3, 3), "exp": (1, 21, 3), "t": (1, 3), "kp": (1, 21, 3),
                "x_s": (1, 21, 3)}


def read_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("name", REAL)
def test_written_template_matches_the_real_templates_structure(media, name, tmp_path):
    real = read_pickle(media / f"lp_template_{name}.pkl")
    vector = load_template(media / f"lp_template_{name}.pkl").vector
    path = save_template(motion_template(vector), tmp_path / "motion.pkl")
    ours = read_pickle(path)

    assert set(ours) == {"n_frames", "output_fps", "motion", "c_eyes_lst", "c_lip_lst"}
    assert type(ours["n_frames"]) is type(real["n_frames"]) is int
    assert type(ours["output_fps"]) is type(real["output_fps"]) is int
    assert ours["n_frames"] == len(ours["motion"]) == len(real["motion"]) == real["n_frames"]
    real_frame, our_frame = real["motion"][0], ours["motion"][0]
    rot_key = "R" if "R" in real_frame else "R_d"
    for key in ("scale", "exp", "t"):  # what every real generation has, same shape and dtype
        assert our_frame[key].shape == real_frame[key].shape and our_frame[key].dtype == real_frame[key].dtype
    assert our_frame["R"].shape == real_frame[rot_key].shape and our_frame["R"].dtype == np.float32
    for frame in ours["motion"]:
        assert {k: (v.shape, v.dtype) for k, v in frame.items()} == \
               {k: (s, np.dtype(np.float32)) for k, s in FRAME_SHAPES.items()}
    for new, old, width in (("c_eyes_lst", "c_d_eyes_lst", 2), ("c_lip_lst", "c_d_lip_lst", 1)):
        assert len(ours[new]) == ours["n_frames"]
        assert all(c.shape == (1, width) and c.dtype == np.float32 for c in ours[new])
        if old in real:  # the older real files hold the same lists under the old names
            assert real[old][0].shape == ours[new][0].shape and real[old][0].dtype == ours[new][0].dtype


@pytest.mark.parametrize("name", REAL)
def test_real_template_round_trips_through_the_vector(media, name, tmp_path):
    real = read_pickle(media / f"lp_template_{name}.pkl")
    loaded = load_template(media / f"lp_template_{name}.pkl")
    assert loaded.vector.shape == (real["n_frames"], VECTOR_DIM) and loaded.vector.dtype == np.float32
    assert loaded.fps == real["output_fps"]
    rot_key = "R" if "R" in real["motion"][0] else "R_d"
    rebuilt = motion_template(loaded.vector, fps=real["output_fps"])
    for ours, theirs in zip(rebuilt["motion"], real["motion"]):
        # the angles recovered from R give R back: our rotation convention is LivePortrait's
        np.testing.assert_allclose(ours["R"], theirs[rot_key], atol=2e-6)
        np.testing.assert_array_equal(ours["exp"], theirs["exp"])
        np.testing.assert_array_equal(ours["scale"], theirs["scale"])
        np.testing.assert_array_equal(ours["t"], theirs["t"])
    path = save_template(rebuilt, tmp_path / "again.pkl")
    again = load_template(path)
    np.testing.assert_allclose(again.vector, loaded.vector, atol=1e-4)
    assert again.fps == real["output_fps"]
    if "c_d_lip_lst" in real:  # old names read as well
        np.testing.assert_array_equal(loaded.c_lip[:, 0], np.ravel(real["c_d_lip_lst"]))
        assert loaded.c_eyes.shape == (real["n_frames"], 2)
    else:
        assert loaded.c_lip is None and loaded.c_eyes is None


def test_x_s_is_the_driven_canonical_keypoints_and_kp_is_stored():
    rng = np.random.default_rng(0)
    vector = np.zeros((6, VECTOR_DIM), np.float32)
    vector[:, :63] = rng.normal(scale=0.02, size=(6, 63))
    vector[:, 63] = 1.5
    vector[:, 64:67] = rng.normal(scale=0.05, size=(6, 3))
    vector[:, 67:70] = rng.uniform(-20, 20, size=(6, 3))
    kp = rng.normal(scale=0.3, size=(21, 3)).astype(np.float32)
    template = motion_template(vector, kp)
    for i, frame in enumerate(template["motion"]):
        rot = rotation_matrix(vector[i, 67], vector[i, 68], vector[i, 69])
        expected = 1.5 * (kp @ rot + vector[i, :63].reshape(21, 3)) + vector[i, 64:67] * [1, 1, 0]
        np.testing.assert_allclose(frame["x_s"][0], expected, atol=1e-5)
        np.testing.assert_array_equal(frame["kp"][0], kp)
    default = motion_template(vector)  # no kp given: the schematic neutral face
    np.testing.assert_array_equal(default["motion"][0]["kp"][0], neutral_canonical_kp())


def test_neutral_face_is_a_face_in_keypoint_space():
    kp = neutral_canonical_kp()
    assert kp.shape == (21, 3) and kp.dtype == np.float32
    assert np.abs(kp).max() < 1.0
    assert len(np.unique(kp.round(4), axis=0)) == 21
    lips, eyes = kp[list(LIP_KEYPOINTS)], kp[list(EYE_KEYPOINTS)]
    assert lips[:, 1].min() > eyes[:, 1].max()  # the mouth sits below the eyes (y points down)
    x = transform_keypoints(kp, np.ones(1, np.float32), np.eye(3, dtype=np.float32),
                            np.zeros((21, 3), np.float32), np.zeros(3, np.float32))
    np.testing.assert_allclose(x[:, :2], kp[:, :2])


@pytest.mark.parametrize("n_samples,rate,expected", [
    (4800, 16000, 8), (16000, 16000, 25), (64160, 16000, 101), (976000, 16000, 1525),
    (1, 16000, 1), (641, 16000, 2), (640, 16000, 1), (13230, 44100, 8), (0, 16000, 0)])
def test_frame_count_is_the_ceiling_of_seconds_times_25(n_samples, rate, expected):
    assert n_frames_for(n_samples, rate) == expected


def test_outputs_appear_atomically(tmp_path):
    target = tmp_path / "sub" / "motion.npy"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        assert tmp.parent == target.parent and tmp.suffix == ".npy"
        raise RuntimeError("writer died")
    assert not target.exists() and list(target.parent.iterdir()) == []
    save_vector(np.ones((3, VECTOR_DIM)), target)
    assert np.load(target).dtype == np.float32 and np.load(target).shape == (3, VECTOR_DIM)
    assert [p.name for p in target.parent.iterdir()] == ["motion.npy"]


def test_loader_rejects_what_is_not_a_template(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"n_frames": 3, "motion": []}))
    with pytest.raises(ValueError, match="non-empty"):
        load_template(bad)
    bad.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="not a LivePortrait motion template"):
        load_template(bad)
    with pytest.raises(ValueError, match="lack"):
        template_to_vector({"motion": [{"exp": np.zeros((1, 21, 3))}]})


def test_resampling_keeps_duration_and_values():
    t = np.arange(30) / 30.0
    vector = np.tile(t[:, None], (1, VECTOR_DIM)).astype(np.float32)  # a ramp in seconds
    out = resample_vector(vector, 30.0, 25.0)
    assert out.shape == (25, VECTOR_DIM)
    np.testing.assert_allclose(out[:, 0], np.arange(25) / 25.0, atol=1e-6)
    np.testing.assert_array_equal(resample_vector(vector, 25.0, 25.0), vector)
