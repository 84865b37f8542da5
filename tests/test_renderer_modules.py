"""LivePortrait's renderer networks F, W, G and S: official keys and sizes, strict loading through the
real loaders, and one full-size forward each (W and G take seconds per frame on a 2-core CPU: the
other checks run at small spatial sizes, which these convolutional networks accept)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from models.liveportrait.appearance_feature_extractor import (
    AppearanceFeatureExtractor,
    load_appearance_feature_extractor,
)
from models.liveportrait.blocks import kp2gaussian, make_coordinate_grid
from models.liveportrait.spade_generator import SPADEDecoder, load_spade_generator
from models.liveportrait.stitching_retargeting import (
    MLP_SIZES,
    StitchingRetargetingModule,
    combined_ratio,
    load_stitching_retargeting,
)
from models.liveportrait.warping_network import WarpingNetwork, load_warping_network


def reference_dir() -> Path:
    try:
        from pipeline.media import media_dir
        return media_dir().parent / "reference"
    except ImportError:  # the media helper moved or is half-moved: the default layout
        return Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def manifest(stem: str) -> dict:
    path = reference_dir() / f"liveportrait_{stem}.keys.json"
    if not path.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} missing; CI=true requires it")
        pytest.skip(f"{path} missing (the key/shape manifests live in shared/reference)")
    return json.loads(path.read_text())


# name in the manifests, class, loader, parameter count (REFERENCE.md section 11), a small input
NETWORKS = {
    "appearance_feature_extractor": (AppearanceFeatureExtractor, load_appearance_feature_extractor, 836_224),
    "warping_module": (WarpingNetwork, load_warping_network, 45_529_829),
    "spade_generator": (SPADEDecoder, load_spade_generator, 55_365_388),
}
S_PARAMS = {"retarget_shoulder": 45_249, "retarget_mouth": 37_311, "retarget_eye": 144_703}


def keypoints(seed: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x_s = torch.rand(batch, 21, 3, generator=gen) * 1.2 - 0.6
    return x_s, x_s + 0.05 * torch.randn(batch, 21, 3, generator=gen)


def small_forward(stem: str, model: torch.nn.Module):
    """One cheap forward at a reduced spatial size (the hourglass needs H, W divisible by 32)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if stem == "appearance_feature_extractor":
            return model(torch.rand(1, 3, 64, 64, generator=gen))
        if stem == "warping_module":
            x_s, x_d = keypoints(1)
            return model(torch.randn(1, 32, 16, 32, 32, generator=gen), kp_driving=x_d, kp_source=x_s)
        return model(torch.randn(1, 256, 8, 8, generator=gen))


def perturbed_copy(model: torch.nn.Module, seed: int = 1) -> None:
    """Perturb every tensor of the state (running statistics included) so that each key matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if key.endswith("running_var"):
                t.mul_(torch.exp(0.1 * noise))
            else:
                t.add_(noise * 0.02)


def assert_same_outputs(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_outputs(a[key], b[key])
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("stem", NETWORKS)
def test_state_dict_equals_official_manifest(stem):
    reference = manifest(stem)
    cls, _, n_params = NETWORKS[stem]
    model = cls()
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == reference
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_stitching_manifest_and_sizes():
    reference = manifest("stitching_retargeting_module")
    model = StitchingRetargetingModule()
    assert set(reference) == set(MLP_SIZES)
    for name, keys in reference.items():
        sub = getattr(model, name)
        assert {k: list(v.shape) for k, v in sub.state_dict().items()} == keys, name
        assert sum(p.numel() for p in sub.parameters()) == S_PARAMS[name], name
    x_s, x_d = keypoints(0, batch=2)
    assert model.stitch_delta(x_s, x_d).shape == (2, 65)


@pytest.mark.parametrize("stem", NETWORKS)
def test_round_trip_through_loader(stem, tmp_path):
    _, loader, _ = NETWORKS[stem]
    original = loader("random")
    perturbed_copy(original)
    path = tmp_path / f"{stem}.pth"
    torch.save(original.state_dict(), path)

    loaded = loader(path)
    assert loaded.weight_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in original.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert_same_outputs(small_forward(stem, original), small_forward(stem, loaded))


@pytest.mark.parametrize("stem", NETWORKS)
def test_loaders_reject_other_files(stem, tmp_path):
    _, loader, _ = NETWORKS[stem]
    other = "spade_generator" if stem == "appearance_feature_extractor" else "appearance_feature_extractor"
    source = AppearanceFeatureExtractor() if other == "appearance_feature_extractor" else SPADEDecoder()
    state = source.state_dict()
    cases = {
        "other_network.pth": state,  # the wrong network's file
        "list.pth": [1, 2, 3],
    }
    if stem == "appearance_feature_extractor":
        own = AppearanceFeatureExtractor().state_dict()
        cases["missing.pth"] = {k: v for k, v in own.items() if k != "second.bias"}
        cases["extra.pth"] = {**own, "third.weight": torch.zeros(1)}
        cases["shape.pth"] = {**own, "second.weight": torch.zeros(512, 128, 1, 1)}
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ValueError, match=name):
            loader(tmp_path / name)
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        loader(tmp_path / "garbage.pth")
    with pytest.raises(FileNotFoundError, match=r"absent\.pth.*models\.weights verify"):
        loader(tmp_path / "absent.pth")


def test_random_mode_is_seeded_loud_and_leaves_caller_rng_alone(caplog):
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="models.weights"):
        a = load_appearance_feature_extractor("random", seed=3)
        s = load_stitching_retargeting("random", name="liveportrait_animals_stitching_retargeting_module")
    assert "liveportrait_appearance_feature_extractor" in caplog.text
    assert "liveportrait_animals_stitching_retargeting_module" in caplog.text
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert a.weight_id == "random" and s.weight_id == "random"
    b = load_appearance_feature_extractor("random", seed=3)
    c = load_appearance_feature_extractor("random", seed=4)
    assert torch.equal(a.second.weight, b.second.weight)
    assert not torch.equal(a.second.weight, c.second.weight)


def test_stitching_file_loads_with_and_without_ddp_prefix(tmp_path):
    original = load_stitching_retargeting("random", seed=5)
    plain = original.checkpoint()
    prefixed = {name: {f"module.{k}": v for k, v in sd.items()} for name, sd in plain.items()}
    x_s, x_d = keypoints(2, batch=3)
    expected = original.stitch(x_s, x_d)
    for label, content in (("plain", plain), ("ddp", prefixed)):
        path = tmp_path / f"{label}.pth"
        torch.save(content, path)
        loaded = load_stitching_retargeting(path)
        assert loaded.weight_id == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not any(p.requires_grad for p in loaded.parameters())
        assert torch.equal(loaded.stitch(x_s, x_d), expected), label

    broken = {**plain, "retarget_eye": {k: v for k, v in plain["retarget_eye"].items() if k != "mlp.10.bias"}}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth.*retarget_eye"):
        load_stitching_retargeting(tmp_path / "broken.pth")
    torch.save({"retarget_shoulder": plain["retarget_shoulder"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="retarget_mouth"):
        load_stitching_retargeting(tmp_path / "partial.pth")
    torch.save(plain["retarget_shoulder"], tmp_path / "flat.pth")  # one MLP's state dict, not the bundle
    with pytest.raises(ValueError, match=r"flat\.pth"):
        load_stitching_retargeting(tmp_path / "flat.pth")
    with pytest.raises(FileNotFoundError, match="models.weights verify"):
        load_stitching_retargeting(tmp_path / "absent.pth")


def test_stitch_and_retarget_follow_liveportrait_arithmetic():
    model = load_stitching_retargeting("random", seed=7)
    x_s, x_d = keypoints(3, batch=2)
    sd = model.retarget_shoulder.state_dict()
    h = torch.cat([x_s.flatten(1), x_d.flatten(1)], 1)
    for i in (0, 2, 4):
        h = torch.relu(h @ sd[f"mlp.{i}.weight"].T + sd[f"mlp.{i}.bias"])
    delta = h @ sd["mlp.6.weight"].T + sd["mlp.6.bias"]
    expected = x_d.clone()
    expected += delta[:, :63].reshape(2, 21, 3)
    expected[..., 0] += delta[:, 63:64]
    expected[..., 1] += delta[:, 64:65]
    torch.testing.assert_close(model.stitch(x_s, x_d), expected, rtol=0, atol=1e-6)
    assert torch.equal(x_d, keypoints(3, batch=2)[1])  # the input is not modified

    lip = combined_ratio(torch.tensor([[0.3], [0.1]]), 0.0)
    assert lip.tolist() == [[pytest.approx(0.3), 0.0], [pytest.approx(0.1), 0.0]]
    assert model.retarget_lip(x_s, lip).shape == (2, 21, 3)
    eye = combined_ratio(torch.tensor([[0.3, 0.32], [0.2, 0.25]]), torch.tensor([0.39, 0.1]))
    assert eye.shape == (2, 3)
    assert model.retarget_eyes(x_s, eye).shape == (2, 21, 3)


def test_coordinate_grid_and_heatmaps():
    ref = torch.zeros(1)
    grid = make_coordinate_grid((3, 4, 5), ref)
    assert grid.shape == (3, 4, 5, 3)
    assert torch.allclose(grid[0, 0, :, 0], torch.linspace(-1, 1, 5))  # x along W
    assert torch.allclose(grid[0, :, 0, 1], torch.linspace(-1, 1, 4))  # y along H
    assert torch.allclose(grid[:, 0, 0, 2], torch.linspace(-1, 1, 3))  # z along D
    kp = torch.tensor([[[0.5, -1.0, 1.0]]])
    heat = kp2gaussian(kp, (3, 4, 5), 0.01)
    assert heat.shape == (1, 1, 3, 4, 5)
    d, h, w = 2, 0, 3  # z = 1, y = -1, x = 0.5: the keypoint itself
    assert heat[0, 0, d, h, w].item() == pytest.approx(1.0)
    far = (grid[1, 2, 1] - kp[0, 0]).pow(2).sum()
    assert heat[0, 0, 1, 2, 1].item() == pytest.approx(torch.exp(-0.5 * far / 0.01).item())


@pytest.fixture(scope="module")
def decoder() -> SPADEDecoder:
    """Random G, built once for the tests that only read it."""
    return load_spade_generator("random")


def test_spectral_norm_is_fixed_in_eval_and_settled_for_random_weights(decoder):
    model = decoder
    conv = model.G_middle_0.conv_0
    u = conv.weight_u.clone()
    small_forward("spade_generator", model)
    assert torch.equal(conv.weight_u, u)  # eval mode: no power iteration, as the official inference
    w = conv.weight_orig.flatten(1)
    sigma_top = torch.linalg.matrix_norm(w, ord=2)
    sigma = conv.weight_u @ w @ conv.weight_v  # what eval mode divides by: near the top singular value
    assert 0.95 * sigma_top <= sigma <= sigma_top * (1 + 1e-4)


# --- one full-size forward each ---

def test_appearance_feature_extractor_full_size():
    model = load_appearance_feature_extractor("random")
    with torch.no_grad():
        out = model(torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 32, 16, 64, 64) and torch.isfinite(out).all()


def test_warping_network_full_size_identity_motion():
    """With x_d == x_s every motion proposal is the identity grid, so whatever weights the softmax
    gives them, the deformation is the identity grid (corners at -1 and 1) and the heatmaps vanish."""
    model = load_warping_network("random")
    feature = torch.randn(1, 32, 16, 64, 64, generator=torch.Generator().manual_seed(0))
    x_s, _ = keypoints(4)
    with torch.no_grad():
        out = model(feature, kp_driving=x_s, kp_source=x_s)
    assert list(out) == ["occlusion_map", "deformation", "out"]
    assert out["out"].shape == (1, 256, 64, 64) and torch.isfinite(out["out"]).all()
    assert out["occlusion_map"].shape == (1, 1, 64, 64)
    assert ((out["occlusion_map"] > 0) & (out["occlusion_map"] < 1)).all()
    assert out["deformation"].shape == (1, 16, 64, 64, 3)
    z, y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64),
                             indexing="ij")
    torch.testing.assert_close(out["deformation"][0], torch.stack([x, y, z], -1), rtol=0, atol=1e-5)


def test_spade_generator_full_size(decoder):
    model = decoder
    with torch.no_grad():
        out = model(torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 3, 512, 512) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0


# --- the fast CPU forward (models.liveportrait.render_cpu): same outputs within 1e-4 ---

def test_fast_cpu_warping_matches_eager_batched():
    from models.liveportrait.render_cpu import fast_cpu

    model = load_warping_network("random")
    perturbed_copy(model, seed=2)
    fast = fast_cpu(model)
    feature = torch.randn(2, 32, 16, 32, 32, generator=torch.Generator().manual_seed(3))
    x_s, x_d = keypoints(5, batch=2)
    with torch.no_grad():
        expected = model(feature, kp_driving=x_d, kp_source=x_s)
        got = fast(feature, kp_driving=x_d, kp_source=x_s)
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].shape == expected[key].shape, key
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4, msg=key)


def test_fast_cpu_decoder_matches_eager_with_and_without_nnpack(decoder, monkeypatch):
    from models.liveportrait import render_cpu

    model = decoder
    fast = render_cpu.fast_cpu(model)
    feature = torch.randn(2, 256, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(feature)
        got = fast(feature)
        monkeypatch.setattr(render_cpu, "nnpack_available", lambda: False)
        fallback = fast(feature)
    assert got.shape == expected.shape == (2, 3, 128, 128)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(fallback, expected, rtol=0, atol=1e-5)
    with pytest.raises(TypeError):
        render_cpu.fast_cpu(AppearanceFeatureExtractor())
