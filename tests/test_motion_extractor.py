"""LivePortrait motion extractor: official keys, strict loading through the real loader, the forward."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.media import REPO_ROOT
from models.liveportrait.motion_extractor import (
    DEPTHS,
    MotionExtractor,
    extract,
    load_motion_extractor,
)

REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "liveportrait_motion_extractor.keys.json"
N_PARAMS = 28_118_728


@pytest.fixture(scope="module")
def reference_shapes() -> dict[str, list[int]]:
    if not REFERENCE.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{REFERENCE} missing; CI=true requires it")
        pytest.skip(f"{REFERENCE} missing")
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[MotionExtractor, Path]:
    """A random model with every parameter perturbed (so each key matters), saved as a plain state dict."""
    model = load_motion_extractor("random")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    path = tmp_path_factory.mktemp("lp") / "motion_extractor.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_state_dict_equals_official_manifest(reference_shapes):
    model = MotionExtractor()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == reference_shapes
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """ConvNeXt-V2-Tiny written out from the official equations, reading weights by checkpoint key."""
    def ln_channels_first(x, prefix):
        mean = x.mean(1, keepdim=True)
        var = ((x - mean) ** 2).mean(1, keepdim=True)
        return sd[prefix + ".weight"][:, None, None] * (x - mean) / torch.sqrt(var + 1e-6) + sd[prefix + ".bias"][:, None, None]

    for i in range(4):
        ds = f"detector.downsample_layers.{i}"
        if i == 0:
            x = ln_channels_first(F.conv2d(x, sd[ds + ".0.weight"], sd[ds + ".0.bias"], stride=4), ds + ".1")
        else:
            x = F.conv2d(ln_channels_first(x, ds + ".0"), sd[ds + ".1.weight"], sd[ds + ".1.bias"], stride=2)
        for j in range(DEPTHS[i]):
            b = f"detector.stages.{i}.{j}."
            y = F.conv2d(x, sd[b + "dwconv.weight"], sd[b + "dwconv.bias"], padding=3, groups=x.shape[1])
            y = y.permute(0, 2, 3, 1)
            y = F.layer_norm(y, (y.shape[-1],), sd[b + "norm.weight"], sd[b + "norm.bias"], 1e-6)
            y = F.gelu(F.linear(y, sd[b + "pwconv1.weight"], sd[b + "pwconv1.bias"]))
            g = torch.norm(y, p=2, dim=(1, 2), keepdim=True)
            y = sd[b + "grn.gamma"] * (y * (g / (g.mean(-1, keepdim=True) + 1e-6))) + sd[b + "grn.beta"] + y
            y = F.linear(y, sd[b + "pwconv2.weight"], sd[b + "pwconv2.bias"])
            x = x + y.permute(0, 3, 1, 2)
    feat = F.layer_norm(x.mean((2, 3)), (768,), sd["detector.norm.weight"], sd["detector.norm.bias"], 1e-6)
    return {k: F.linear(feat, sd[f"detector.fc_{k}.weight"], sd[f"detector.fc_{k}.bias"])
            for k in ("kp", "exp", "pitch", "yaw", "roll", "t", "scale")}


def test_round_trip_through_loader_and_official_forward(saved):
    original, path = saved
    loaded = load_motion_extractor(path)
    assert loaded.weight_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in original.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 256, dtype=np.float32)
    crops = np.stack([(ramp[:, None, None] * 0.5 + ramp[None, :, None] * 0.3
                       + rng.uniform(0, 50, (256, 256, 3))).clip(0, 255).astype(np.uint8) for _ in range(2)])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        direct = original(x)  # one batch of two
    out = extract(loaded, crops, batch_size=1)  # two batches of one, through the loaded copy
    shapes = {"kp": (2, 21, 3), "exp": (2, 21, 3), "pitch": (2, 66), "yaw": (2, 66), "roll": (2, 66),
              "t": (2, 3), "scale": (2, 1)}
    assert {k: v.shape for k, v in out.items()} == shapes
    assert all(v.dtype == np.float32 for v in out.values())
    for key, value in direct.items():
        assert value.shape == (2, int(np.prod(shapes[key][1:])))
        np.testing.assert_allclose(out[key].reshape(2, -1), value.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
    assert not np.allclose(out["exp"][0], out["exp"][1])  # different crops, different outputs

    with torch.no_grad():
        expected = reference_forward(original.state_dict(), x[:1])
    for key, value in expected.items():
        np.testing.assert_allclose(direct[key][:1].numpy(), value.numpy(), rtol=1e-4, atol=1e-4, err_msg=key)


def test_strict_load_rejects_other_files(saved, tmp_path):
    _, path = saved
    state = torch.load(path, weights_only=True)
    cases = {
        "missing.pth": {k: v for k, v in state.items() if k != "detector.fc_exp.bias"},
        "extra.pth": {**state, "detector.fc_extra.weight": torch.zeros(1)},
        "shape.pth": {**state, "detector.fc_t.weight": torch.zeros(4, 768)},
        "list.pth": [1, 2, 3],
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ValueError):
            load_motion_extractor(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="models.weights verify"):
        load_motion_extractor(tmp_path / "absent.pth")


def test_random_mode_is_seeded_loud_and_leaves_caller_rng_alone(caplog):
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="models.weights"):
        a = load_motion_extractor("random", seed=3)
    assert "RANDOM WEIGHTS" in caplog.text and "liveportrait_motion_extractor" in caplog.text
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert a.weight_id == "random"
    b = load_motion_extractor("random", seed=3)
    c = load_motion_extractor("random", seed=4)
    w = "detector.fc_exp.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_extract_validates_input():
    model = MotionExtractor().eval()
    with pytest.raises(ValueError, match="uint8"):
        extract(model, np.zeros((1, 256, 256, 3), np.float32))
    with pytest.raises(ValueError, match="256"):
        extract(model, np.zeros((1, 224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        extract(model, np.zeros((1, 256, 256, 3), np.uint8), batch_size=0)
    empty = extract(model, np.zeros((0, 256, 256, 3), np.uint8))
    assert empty["kp"].shape == (0, 21, 3) and empty["pitch"].shape == (0, 66)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 256, 256, 3))
