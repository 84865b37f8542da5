"""AMT-S (models.amt): the official checkpoint's keys and shapes, strict loading of the checkpoint
layout AMT's trainer writes, the forward contract VBench's motion_smoothness relies on, the missing
file's error, and the benchmark's interpolator built on it.

The real ``amt-s.pth`` cannot be downloaded here, so the expected state dict is written out below
from the official module definitions (MCG-NKU/AMT at commit 70f988f: ``networks/AMT-S.py`` with
``cfgs/AMT-S.yaml``, the same files VBench vendors in ``vbench/third_party/amt``). Building that
official ``Model(corr_radius=3, corr_lvls=4, num_flows=3)`` gives 213 state-dict entries and
2,990,543 parameters (the AMT paper lists AMT-S at 2.99M / "3.0M").
"""
from __future__ import annotations

import hashlib
import logging
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from models.amt import AmtS, load_amt_s
from models.weights import REGISTRY

OFFICIAL_KEYS = 213
OFFICIAL_PARAMS = 2_990_543
SIZE = 128  # the smallest side the official network computes (64 px gives NaN there: see MIN_SIZE)


def official_layout() -> dict[str, tuple[int, ...]]:
    """Every key and shape of the official AMT-S state dict, from its module definitions."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:  # nn.Conv2d, bias on
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def conv_prelu(name: str, cin: int, cout: int) -> None:  # ifrnet.convrelu: Sequential(conv, PReLU(cout))
        conv(f"{name}.0", cin, cout, 3)
        shapes[f"{name}.1.weight"] = (cout,)

    # feat_enc.SmallEncoder(output_dim=84, norm_fn='instance'): InstanceNorm2d without affine adds no keys.
    conv("feat_encoder.conv1", 3, 32, 7)
    cin = 32
    for layer, (dim, stride) in enumerate(((32, 1), (64, 2), (96, 2)), 1):  # _make_layer(32/64/96)
        for block in range(2):  # BottleneckBlock(in, dim, stride) then BottleneckBlock(dim, dim)
            prefix = f"feat_encoder.layer{layer}.{block}"
            conv(f"{prefix}.conv1", cin, dim // 4, 1)
            conv(f"{prefix}.conv2", dim // 4, dim // 4, 3)
            conv(f"{prefix}.conv3", dim // 4, dim, 1)
            if block == 0 and stride != 1:
                conv(f"{prefix}.downsample.0", cin, dim, 1)
            cin = dim
    conv("feat_encoder.conv2", 96, 84, 1)

    # ifrnet.Encoder(channels=[20, 32, 44, 56]): pyramid{i} = Sequential(convrelu stride 2, convrelu).
    previous = 3
    for level, ch in enumerate((20, 32, 44, 56), 1):
        conv_prelu(f"encoder.pyramid{level}.0", previous, ch)
        conv_prelu(f"encoder.pyramid{level}.1", ch, ch)
        previous = ch

    # Decoders: convblock = Sequential(convrelu(cin, width), ResBlock(width, 20), ConvTranspose2d(width, out, 4)).
    # InitDecoder(56, 44, 20): cin 2*56+1, width 112, out 44+4; IntermediateDecoder(44, 32, 20): 3*44+4, 132,
    # 32+4; IntermediateDecoder(32, 20, 20): 3*32+4, 96, 20+4; MultiFlowDecoder(20, 20, 3): 3*20+4, 60, 8*3.
    for name, cin, width, out in (("decoder4", 113, 112, 48), ("decoder3", 136, 132, 36),
                                  ("decoder2", 100, 96, 24), ("decoder1", 64, 60, 24)):
        block = f"{name}.convblock"
        conv_prelu(f"{block}.0", cin, width)
        for i, ch in ((1, width), (2, 20), (3, width), (4, 20)):  # ResBlock conv1..conv4: Sequential(conv, PReLU)
            conv_prelu(f"{block}.1.conv{i}", ch, ch)
        conv(f"{block}.1.conv5", width, width, 3)
        shapes[f"{block}.1.prelu.weight"] = (width,)
        shapes[f"{block}.2.weight"], shapes[f"{block}.2.bias"] = (width, out, 4, 4), (out,)  # (in, out, k, k)

    # raft.SmallUpdateBlock(cdim, hidden_dim=76, flow_dim=20, corr_dim=64, fc_dim=68, corr_levels=4, radius=3):
    # cor_planes = 4 * 7^2 = 196 per direction, convc1 reads both (392).
    for name, cdim in (("update4", 44), ("update3", 32), ("update2", 20)):
        conv(f"{name}.convc1", 392, 64, 1)
        conv(f"{name}.convf1", 4, 40, 7)
        conv(f"{name}.convf2", 40, 20, 3)
        conv(f"{name}.conv", 84, 68, 3)
        conv(f"{name}.gru.0", 68 + 4 + cdim, 76, 3)
        conv(f"{name}.gru.2", 76, 76, 3)
        for head, out in (("feat_head", cdim), ("flow_head", 4)):
            conv(f"{name}.{head}.0", 76, 76, 3)
            conv(f"{name}.{head}.2", 76, out, 3)

    # comb_block = Sequential(Conv2d(3*3, 6*3, 3), PReLU(18), Conv2d(18, 3, 3)).
    conv("comb_block.0", 9, 18, 3)
    shapes["comb_block.1.weight"] = (18,)
    conv("comb_block.2", 18, 3, 3)
    return shapes


def frames(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related frames: noise, and the same noise shifted by (2, 3) px with a little change."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(1, 3, *size, generator=gen)
    b = torch.roll((a + 0.1 * torch.rand(a.shape, generator=gen)).clamp(0, 1), shifts=(2, 3), dims=(2, 3))
    return a, b


def middle(model: AmtS, a: torch.Tensor, b: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return model(a, b, torch.full((1, 1, 1, 1), 0.5), eval=True, **kwargs)["imgt_pred"]


def perturbed_state(seed: int) -> dict[str, torch.Tensor]:
    """A random AMT-S state dict in which every tensor differs (PReLUs included), so a misplaced one shows."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in load_amt_s("random").state_dict().items()}


def scaled_state(seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights at a tame scale (conv weights ~ 0.5/sqrt(fan-in), PReLU slopes near 0.25),
    drawn from one generator in the official key order: the outputs stay off the 0/1 clamp."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_layout().items():
        noise = torch.randn(shape, generator=gen)
        if key.endswith(".bias"):
            state[key] = 0.01 * noise
        elif len(shape) == 1:
            state[key] = 0.25 + 0.05 * noise
        else:
            state[key] = 0.5 * noise / float(np.prod(shape[1:])) ** 0.5
    return state


def official_checkpoint(state: dict[str, torch.Tensor]) -> OrderedDict:
    """The layout of AMT's trainer (``trainers/base_trainer.py`` save): epoch, state_dict, and AdamW's
    state dict, whose learning rate the cosine schedule (numpy) left as a numpy float64."""
    lr = np.float64(2e-5) + np.float64(1.8e-4) * 0.5 * (1 + np.cos(np.pi * 0.999))
    moments = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}
    optim = {"state": {0: moments}, "param_groups": [{"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8,
                                                      "weight_decay": 0.0, "amsgrad": False, "params": [0]}]}
    checkpoint = OrderedDict(epoch=299)
    checkpoint["state_dict"] = state
    checkpoint["optim"] = optim
    return checkpoint


def with_numpy1_names(src: Path, dst: Path) -> None:
    """``src`` rewritten as numpy 1.x pickles its scalars (``numpy.core``), as the released file was written."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n" in data
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            zout.writestr(info, data)


def test_state_dict_equals_the_official_layout():
    model = AmtS()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = official_layout()
    assert set(shapes) == set(expected), (sorted(set(shapes) - set(expected)), sorted(set(expected) - set(shapes)))
    assert shapes == expected
    assert len(shapes) == OFFICIAL_KEYS
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    assert abs(OFFICIAL_PARAMS - 3.0e6) < 0.05e6  # the paper's "3.0M"
    # A few by hand: SmallEncoder.conv1 = Conv2d(3, 32, 7); the update blocks' convc1 reads 2 * 4 * 7^2
    # correlation channels; InitDecoder's first conv sees 2 * 56 context channels + t; the merge sees 3 RGB
    # candidates; MultiFlowDecoder's transposed conv gives 8 * 3 channels (2 flows x 2, mask, RGB per pair).
    assert shapes["feat_encoder.conv1.weight"] == (32, 3, 7, 7)
    assert shapes["update4.convc1.weight"] == shapes["update2.convc1.weight"] == (64, 392, 1, 1)
    assert shapes["update3.gru.0.weight"] == (76, 68 + 4 + 32, 3, 3)
    assert shapes["decoder4.convblock.0.0.weight"] == (112, 113, 3, 3)
    assert shapes["decoder1.convblock.2.weight"] == (60, 24, 4, 4)
    assert shapes["comb_block.0.weight"] == (18, 9, 3, 3)


@pytest.fixture(scope="module")
def source() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A perturbed random state dict and its middle frame of ``frames(0)``, computed by a model built
    without the loader."""
    state = perturbed_state(seed=1)
    model = AmtS().eval()
    model.load_state_dict(state, strict=True)
    return state, middle(model, *frames(0))


@pytest.mark.parametrize("layout", ["official", "numpy1_names", "ddp_prefix", "bare_state_dict"])
def test_strict_round_trip_through_the_loader(layout, source, tmp_path):
    state, expected = source
    path = tmp_path / "amt-s.pth"
    if layout == "bare_state_dict":
        torch.save(state, path)
    elif layout == "ddp_prefix":
        torch.save(official_checkpoint({f"module.{k}": v for k, v in state.items()}), path)
    else:
        torch.save(official_checkpoint(state), path)
    if layout == "numpy1_names":
        with_numpy1_names(path, tmp_path / "legacy.pth")
        path = tmp_path / "legacy.pth"

    loaded = load_amt_s(path)
    assert loaded.weight_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded_state[key], value), key
    if layout == "official":  # same tensors in the same places: the same frame
        assert torch.equal(middle(loaded, *frames(0)), expected)


# The official Model (MCG-NKU/AMT 70f988f, networks/AMT-S.py), loaded with scaled_state(7) and run on
# frames(0, (size, size)) at (t, scale_factor): the per-channel means of imgt_pred and its values at
# PIXELS. Our network reproduced them bit for bit on this CPU. They catch what a round trip cannot:
# RAFT's lookup-window order, the t -> 0/1 flow scalings (t = 0.25), border padding of the warps.
PIXELS = ((0, 0, 0), (1, 37, 91), (2, -1, -1), (0, 64, 5))  # (channel, y, x)
OFFICIAL_OUTPUTS = {
    (0.5, 1.0, SIZE): ((0.4031936, 0.5744288, 0.3971586), (0.6160803, 0.5333191, 0.6577309, 0.2300135)),
    (0.25, 1.0, SIZE): ((0.4032097, 0.5744230, 0.3971210), (0.6159381, 0.5356588, 0.6582182, 0.2258515)),
    (0.5, 0.5, 2 * SIZE): ((0.4013207, 0.5729235, 0.3998304), (0.4233710, 0.5363560, 0.2784973, 0.6487700)),
}


@pytest.mark.parametrize("case", OFFICIAL_OUTPUTS)
def test_outputs_equal_the_official_networks(case):
    t, scale, size = case
    means, pixels = OFFICIAL_OUTPUTS[case]
    model = AmtS().eval()
    model.load_state_dict(scaled_state(7), strict=True)
    with torch.inference_mode():
        out = model(*frames(0, (size, size)), torch.full((1, 1, 1, 1), t), scale_factor=scale)["imgt_pred"]
    assert out.mean((0, 2, 3)).tolist() == pytest.approx(means, abs=2e-5)
    assert [out[0, c, y, x].item() for c, y, x in PIXELS] == pytest.approx(pixels, abs=2e-5)


def test_loader_rejects_other_files(tmp_path):
    state = perturbed_state(seed=2)
    cases = {
        "missing.pth": {k: v for k, v in state.items() if k != "update3.convc1.bias"},
        "extra.pth": {**state, "update5.convc1.weight": torch.zeros(1)},
        "shape.pth": {**state, "comb_block.0.weight": torch.zeros(18, 6, 3, 3)},
    }
    for name, content in cases.items():
        torch.save(official_checkpoint(content), tmp_path / name)
        with pytest.raises(ValueError, match=name):
            load_amt_s(tmp_path / name)
    torch.save({"epoch": 1, "net": [1, 2]}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth"):
        load_amt_s(tmp_path / "other.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        load_amt_s(tmp_path / "garbage.pth")


def test_missing_file_names_the_path_and_the_fetch(tmp_path):
    path = tmp_path / "amt" / "amt-s.pth"
    with pytest.raises(FileNotFoundError) as info:
        load_amt_s(path)
    text = str(info.value)
    assert str(path) in text and "python -m models.weights fetch --only amt_s" in text
    assert REGISTRY["amt_s"].url in text


def test_forward_contract_in_eval_mode():
    model = load_amt_s("random")
    a, b = frames(3)
    out = middle(model, a, b)
    assert out.shape == a.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1  # clamped like the official model
    assert torch.equal(middle(model, a, b), out)  # eval mode: no dropout, no state
    assert middle(model, *frames(3, (SIZE, 2 * SIZE))).shape == (1, 3, SIZE, 2 * SIZE)
    # scale_factor estimates the flows on smaller frames and still returns the full size.
    assert middle(model, *frames(4, (2 * SIZE, 2 * SIZE)), scale_factor=0.5).shape == (1, 3, 2 * SIZE, 2 * SIZE)
    for shape in ((64, 64), (SIZE, SIZE + 8)):  # coarsest correlation level 1 px (official: NaN); not a multiple of 16
        with pytest.raises(ValueError, match="multiples of 16"):
            middle(model, *frames(5, shape))


def test_random_mode_is_seeded_loud_and_leaves_caller_rng_alone(caplog):
    rng = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="models.weights"):
        a = load_amt_s("random")
    assert "RANDOM WEIGHTS" in caplog.text and "amt_s" in caplog.text
    assert torch.equal(torch.get_rng_state(), rng) and a.weight_id == "random"
    b, c = load_amt_s("random"), load_amt_s("random", seed=1)
    assert torch.equal(a.update4.convc1.weight, b.update4.convc1.weight)
    assert not torch.equal(a.update4.convc1.weight, c.update4.convc1.weight)


def test_benchmark_interpolator_is_amt_s():
    from training.benchmark import METRIC_WEIGHTS, load_interpolator

    assert "amt_s" in METRIC_WEIGHTS
    interpolate, variant = load_interpolator("random", "cpu")
    assert "AMT-S" in variant and "RANDOM" in variant
    a, b = frames(6)
    with torch.inference_mode():
        assert torch.equal(interpolate(a, b), middle(load_amt_s("random"), a, b))
