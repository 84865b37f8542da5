"""The four training losses: hand-checked values, masking, weights."""
import torch

from training.losses import LossWeights, motion_losses


def test_terms_match_hand_computation_on_valid_frames():
    target = torch.zeros(1, 4, 70)
    pred = torch.zeros(1, 4, 70)
    pred[0, :, 0] = torch.tensor([0.0, 1.0, 4.0, 9.0])  # an expression dim, accelerating
    mask = torch.ones(1, 4, dtype=torch.bool)
    total, parts = motion_losses(pred, target, mask, LossWeights(1, 1, 1, 1, 0))
    assert torch.isclose(parts["simple"], torch.tensor((0 + 1 + 16 + 81) / (4 * 70)))
    assert torch.isclose(parts["velocity"], torch.tensor((1 + 9 + 25) / (3 * 70)))
    assert torch.isclose(parts["smooth"], torch.tensor((4 + 4) / (2 * 70)))
    assert torch.isclose(parts["expression"], torch.tensor((0 + 1 + 16 + 81) / (4 * 63)))
    assert torch.isclose(total, sum(parts.values()))
    pred_pose = torch.zeros(1, 4, 70)
    pred_pose[0, :, 69] = 1.0  # a pose dim: not an expression error
    total, parts = motion_losses(pred_pose, target, mask, LossWeights(pose=2.0))
    assert parts["expression"] == 0 and parts["simple"] > 0
    assert torch.isclose(parts["pose"], torch.tensor(4 / (4 * 7)))  # the mean over the 7 pose dims
    assert torch.isclose(total, parts["simple"] + parts["velocity"] + 0.1 * parts["smooth"]
                         + 2.0 * parts["pose"])


def test_masked_frames_do_not_count_and_weights_scale_terms():
    g = torch.Generator().manual_seed(0)
    target, pred = torch.randn(2, 10, 70, generator=g), torch.randn(2, 10, 70, generator=g)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False
    mask[1, :3] = False
    w = LossWeights(simple=1.0, velocity=0.5, smooth=0.25, expression=2.0, pose=3.0)
    total, parts = motion_losses(pred, target, mask, w)
    noisy_pred = pred.clone()
    noisy_pred[0, 7:] += 100.0
    noisy_pred[1, :3] -= 100.0
    total2, parts2 = motion_losses(noisy_pred, target, mask, w)
    for name in parts:
        assert torch.isclose(parts[name], parts2[name]), name
    assert torch.isclose(total, parts["simple"] + 0.5 * parts["velocity"] + 0.25 * parts["smooth"]
                         + 2.0 * parts["expression"] + 3.0 * parts["pose"])
    assert torch.isclose(total, total2)
    _, perfect = motion_losses(target, target, mask, w)
    assert perfect["simple"] == 0 and perfect["velocity"] == 0 and perfect["expression"] == 0
    assert perfect["smooth"] > 0  # smoothness penalises the prediction itself
    empty = torch.zeros(2, 10, dtype=torch.bool)
    total_empty, _ = motion_losses(pred, target, empty, w)
    assert total_empty == 0
