"""Frame FID: pyiqa's FID Inception loaded strictly from the registry's file, and pyiqa's FID run on frames."""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from models.inception_fid import FEATURE_DIM, load_fid_model, random_init
from models.weights import RANDOM
from training.metrics.fid import frame_fid
from training.metrics.video_io import read_frames


def official_layout_file(path):
    """A random state dict in the layout of pytorch-fid's pt_inception file: the FID Inception-v3
    (torchvision's Inception3 with 1008 classes and the FID blocks) that pyiqa loads it into."""
    from pyiqa.archs import inception

    with mock.patch.object(inception, "load_pretrained_network", lambda *args, **kwargs: None):
        network = inception.fid_inception_v3()
    random_init(network, seed=3)
    torch.save(network.state_dict(), path)
    return network


def test_the_registry_file_loads_strictly_into_pyiqa_s_network(tmp_path):
    source = official_layout_file(tmp_path / "pt_inception-2015-12-05-6726825d.pth").eval()
    assert source.fc.weight.shape == (1008, FEATURE_DIM)
    model = load_fid_model(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    assert model.weight_id not in (RANDOM, None) and "RANDOM" not in model.variant
    x = torch.rand(2, 3, 299, 299)
    with torch.inference_mode():
        features = model.model(x, False, True)[0].flatten(1)
        # The same network computed directly: pool features of the source module.
        h = 2 * x - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            h = getattr(source, name)(h)
    assert features.shape == (2, FEATURE_DIM) and features.std() > 1e-3
    assert torch.allclose(features, h.flatten(1), atol=1e-4, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_fid_model(tmp_path / "nowhere.pth")
    # A file of another layout is refused by the strict load.
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_fid_model(tmp_path / "other.pth")


def test_frame_fid_needs_two_frames_per_side(media):
    """(The distance itself is pyiqa's; the benchmark's end-to-end test checks it separates generated
    from real frames: one 2048-d matrix square root costs tens of seconds here.)"""
    model = load_fid_model(RANDOM)
    a = read_frames(media / "lp_d20.mp4", 0.0, 0.2)
    too_few = frame_fid(model, [a[:1]], [a], every=1)
    assert too_few["value"] is None and "2 frames" in too_few["reason"]
    assert (too_few["frames_generated"], too_few["frames_real"]) == (1, 5)
    with pytest.raises(ValueError):
        frame_fid(model, [a], [a], every=0)
