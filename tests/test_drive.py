"""Driving keypoints composed as JoyVASA composes them, checked against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from shards.pose import degrees_to_logits, rotation_matrix
from training.drive import (LIP_KEYPOINTS, MotionSequence, SourceMotion, compose_animal, compose_human,
                            finish, keypoints, source_motion, volume_multiplier)

rng = np.random.default_rng(0)
KP_C = rng.normal(0, 0.3, (21, 3))


def rot(pitch=0.0, yaw=0.0, roll=0.0) -> np.ndarray:
    return np.asarray(rotation_matrix(np.array([pitch]), np.array([yaw]), np.array([roll])), np.float64)[0]


def source() -> SourceMotion:
    return SourceMotion(kp_c=KP_C, R=rot(5, -10, 3), exp=rng.normal(0, 0.02, (21, 3)), scale=1.3,
                        t=np.array([0.05, -0.02, 0.4]))


def constant(n: int, R: np.ndarray, exp: np.ndarray, scale: float, t: np.ndarray) -> MotionSequence:
    return MotionSequence(R=np.repeat(R[None], n, 0), exp=np.repeat(exp[None], n, 0),
                          scale=np.full(n, scale), t=np.repeat(t[None], n, 0))


def test_a_still_sequence_leaves_the_source_face_as_it_is():
    src = source()
    seq = constant(4, rot(20, 30, -5), rng.normal(0, 0.05, (21, 3)), 0.8, np.array([0.3, 0.1, 0.0]))
    np.testing.assert_allclose(compose_human(src, seq), np.repeat(src.x_s[None], 4, 0), atol=1e-6)
    np.testing.assert_allclose(compose_animal(src, seq), np.repeat(src.x_s[None], 4, 0), atol=1e-6)


def test_human_path_by_hand():
    """Frame 1 turns the head by 10 degrees of yaw, doubles the scale, moves t and opens the lips."""
    src = source()
    exp0, exp1 = rng.normal(0, 0.05, (21, 3)), rng.normal(0, 0.05, (21, 3))
    seq = MotionSequence(R=np.stack([rot(), rot(yaw=10)]), exp=np.stack([exp0, exp1]),
                         scale=np.array([1.0, 2.0]), t=np.array([[0.0, 0.0, 0.0], [0.1, -0.2, 0.5]]))
    x_d = compose_human(src, seq, relative_volume=False)
    exp = src.exp + exp1 - exp0
    exp[list(LIP_KEYPOINTS)] = exp1[list(LIP_KEYPOINTS)]
    R = rot(yaw=10) @ src.R
    expected = 2.0 * src.scale * (KP_C @ R + exp) + (src.t + [0.1, -0.2, 0.0]) * [1, 1, 0]
    np.testing.assert_allclose(x_d[1], expected, atol=1e-5)
    # Frame 0: the source pose, expression and scale, but the sequence's own lip expressions.
    exp_first = src.exp.copy()
    exp_first[list(LIP_KEYPOINTS)] = exp0[list(LIP_KEYPOINTS)]
    np.testing.assert_allclose(x_d[0], keypoints(KP_C, src.R, exp_first, src.scale, src.t), atol=1e-5)


def test_regions_move_only_their_part():
    src = source()
    seq = MotionSequence(R=np.stack([rot(), rot(pitch=15)]), exp=rng.normal(0, 0.05, (2, 21, 3)),
                         scale=np.ones(2), t=np.zeros((2, 3)))
    pose = compose_human(src, seq, region="pose", relative_volume=False)
    np.testing.assert_allclose(pose[1], keypoints(KP_C, rot(pitch=15) @ src.R, src.exp, src.scale, src.t), atol=1e-5)
    lip = compose_human(src, seq, region="lip", relative_volume=False)
    moved = np.abs(lip[1] - src.x_s).max(-1) > 1e-7
    assert set(np.flatnonzero(moved)) == set(LIP_KEYPOINTS)
    with pytest.raises(ValueError, match="region"):
        compose_human(src, seq, region="eyes")


def test_volume_multiplier_rescales_motion_to_the_source_size():
    x = rng.normal(0, 1, (21, 3))
    assert volume_multiplier(x, 2 * x) == pytest.approx(np.sqrt(1 / 8))
    src = source()
    seq = MotionSequence(R=np.stack([rot(), rot()]), exp=np.zeros((2, 21, 3)), scale=np.ones(2),
                         t=np.array([[0.0, 0, 0], [0.1, 0, 0]]))
    plain, scaled = compose_human(src, seq, relative_volume=False), compose_human(src, seq)
    m = volume_multiplier(src.x_s, plain[0])
    np.testing.assert_allclose(scaled[1] - scaled[0], (plain[1] - plain[0]) * m, atol=1e-5)


def test_animal_path_keeps_the_source_scale():
    src = source()
    seq = MotionSequence(R=np.stack([rot(), rot()]), exp=np.zeros((2, 21, 3)), scale=np.array([1.0, 3.0]),
                         t=np.zeros((2, 3)))
    np.testing.assert_allclose(compose_animal(src, seq)[1], src.x_s, atol=1e-6)


def test_finish_applies_stitching_then_the_multiplier():
    x_s = rng.normal(0, 1, (21, 3)).astype(np.float32)
    x_d = x_s[None] + rng.normal(0, 0.1, (3, 21, 3)).astype(np.float32)
    np.testing.assert_allclose(finish(x_s, x_d, None, 2.0), x_s + 2 * (x_d - x_s), atol=1e-6)
    shifted = finish(x_s, x_d, lambda s, d: d + 1.0, 1.0)
    np.testing.assert_allclose(shifted, x_d + 1.0, atol=1e-6)


def test_source_motion_from_raw_extractor_outputs():
    raw = {"kp": KP_C.reshape(1, 63), "exp": np.zeros((1, 63)), "t": np.array([[0.1, 0.2, 0.3]]),
           "scale": np.array([[1.5]])}
    for name, deg in (("pitch", 4.0), ("yaw", -12.0), ("roll", 7.0)):
        raw[name] = degrees_to_logits(np.array([deg]))
    src = source_motion(raw)
    np.testing.assert_allclose(src.R, rot(4, -12, 7), atol=1e-3)
    assert src.scale == pytest.approx(1.5)
    with pytest.raises(ValueError, match="expected 63"):
        source_motion({**raw, "kp": np.zeros(60)})
