"""LivePortrait pose conventions against hand-computed values."""
import numpy as np
import pytest
import torch

from shards.pose import (degrees_to_logits, logits_to_degrees, matrix_to_degrees,
                           rotation_matrix, transform_keypoints)


def test_degrees_from_logits_hand_computed():
    # All mass on bin 0 -> -97.5; on bin 65 -> 97.5; uniform -> 32.5*3 - 97.5 = 0.
    onehot = np.full((3, 66), -1e4, dtype=np.float32)
    onehot[0, 0] = onehot[1, 65] = 0.0
    onehot[2] = 0.0
    np.testing.assert_allclose(logits_to_degrees(onehot), [-97.5, 97.5, 0.0], atol=1e-4)
    # Two equal bins 10 and 20 -> 15*3 - 97.5 = -52.5, in torch too.
    two = torch.full((66,), -1e4)
    two[10] = two[20] = 0.0
    assert float(logits_to_degrees(two)) == pytest.approx(-52.5, abs=1e-4)


def test_degrees_to_logits_inverts():
    deg = np.array([-60.0, -7.3, 0.0, 21.9, 80.0])
    np.testing.assert_allclose(logits_to_degrees(degrees_to_logits(deg)), deg, atol=1e-3)


def test_rotation_matrix_hand_computed():
    # Yaw 90 alone: Ry = [[0,0,1],[0,1,0],[-1,0,0]], transposed.
    r = rotation_matrix(np.array(0.0), np.array(90.0), np.array(0.0))
    np.testing.assert_allclose(r, [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-6)
    # Pitch 90 alone: Rx = [[1,0,0],[0,0,-1],[0,1,0]], transposed.
    r = rotation_matrix(np.array(90.0), np.array(0.0), np.array(0.0))
    np.testing.assert_allclose(r, [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-6)
    # Composition order: (Rz Ry Rx)^T = Rx^T Ry^T Rz^T.
    p, y, r_ = 10.0, -25.0, 40.0
    rx = rotation_matrix(np.array(p), np.array(0.0), np.array(0.0))
    ry = rotation_matrix(np.array(0.0), np.array(y), np.array(0.0))
    rz = rotation_matrix(np.array(0.0), np.array(0.0), np.array(r_))
    np.testing.assert_allclose(rotation_matrix(np.array(p), np.array(y), np.array(r_)),
                               rx @ ry @ rz, atol=1e-6)
    torch_r = rotation_matrix(torch.tensor([p]), torch.tensor([y]), torch.tensor([r_]))[0]
    np.testing.assert_allclose(torch_r.numpy(), rx @ ry @ rz, atol=1e-6)
    np.testing.assert_allclose(matrix_to_degrees(rx @ ry @ rz), (p, y, r_), atol=1e-4)


def test_transform_keypoints_drops_tz():
    kp = np.arange(63, dtype=np.float32).reshape(1, 63) / 63
    exp = np.full((1, 63), 0.1, dtype=np.float32)
    scale = np.array([[2.0]], dtype=np.float32)
    t = np.array([[1.0, -1.0, 5.0]], dtype=np.float32)
    rot = np.eye(3, dtype=np.float32)[None]
    x = transform_keypoints(kp, scale, rot, exp, t)
    expect = 2.0 * (kp.reshape(1, 21, 3) + 0.1) + np.array([1.0, -1.0, 0.0])
    np.testing.assert_allclose(x, expect, atol=1e-6)
