"""ONNX Runtime on CPU: same outputs as PyTorch eager, and the export cache keyed by weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from filters.syncnet import sync_scores
from models.syncnet import SyncNetOnnxCpu, load_syncnet
from models.liveportrait.motion_extractor import MOTION_SHAPES, extract, load_motion_extractor, on_onnx_cpu
from models.onnx_cpu import OnnxCpu, placement, writable


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_export_is_cached_per_weights_and_rebuilt_when_damaged(tmp_path):
    net, example = small_net(0), torch.zeros(2, 3, 8, 8)
    first = OnnxCpu(net, example, "small", cache_dir=tmp_path)
    assert first.path.is_file() and first.path.parent == tmp_path
    stamp = first.path.stat().st_mtime_ns
    again = OnnxCpu(net, example, "small", cache_dir=tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp  # loaded, not exported

    other = OnnxCpu(small_net(1), example, "small", cache_dir=tmp_path)
    assert other.path != first.path  # other weights, other file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, other.path.name])

    x = torch.rand(7, 3, 8, 8)  # a batch size the export never saw
    with torch.no_grad():
        assert torch.allclose(first(x), net(x), atol=1e-5)
        assert not torch.allclose(other(x), net(x), atol=1e-3)

    first.path.write_bytes(b"not an onnx file")
    rebuilt = OnnxCpu(net, example, "small", cache_dir=tmp_path)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), net(x), atol=1e-5)
    assert placement(rebuilt) == (torch.device("cpu"), torch.float32)


def test_unwritable_cache_falls_back_to_temp(tmp_path):
    assert writable(tmp_path / "new") == tmp_path / "new" and (tmp_path / "new").is_dir()
    fallback = writable(Path("/proc/no/such/cache"))
    assert fallback != Path("/proc/no/such/cache") and fallback.is_dir()


def test_motion_extractor_matches_eager():
    model = load_motion_extractor("random")
    onnx = on_onnx_cpu(model)
    crops = np.random.default_rng(0).integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
    eager, fast = extract(model, crops, batch_size=4), extract(onnx, crops, batch_size=4)
    assert set(fast) == set(MOTION_SHAPES)
    for key in MOTION_SHAPES:
        assert fast[key].shape == eager[key].shape == (5, *MOTION_SHAPES[key])
        np.testing.assert_allclose(fast[key], eager[key], atol=1e-4, rtol=0, err_msg=key)
        assert np.abs(eager[key]).max() > 1e-3  # not trivially zero


def test_syncnet_matches_eager():
    model = load_syncnet("random")
    onnx = SyncNetOnnxCpu(model)
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    audio = (rng.standard_normal(16 * 640) * 0.1).astype(np.float32)
    eager = sync_scores(model, crops, audio, vshift=3, batch_size=8)
    fast = sync_scores(onnx, crops, audio, vshift=3, batch_size=8)
    assert fast.offset == eager.offset
    assert fast.conf == pytest.approx(eager.conf, abs=1e-3)
    np.testing.assert_allclose(fast.dists, eager.dists, rtol=1e-5)
    assert onnx.weight_id == model.weight_id


def test_cache_key_follows_the_forward_code(tmp_path, monkeypatch):
    """Same weights, edited forward: another cache file (a stale graph would silently run old code)."""
    import importlib
    import sys

    from models.onnx_cpu import cache_key

    source = ("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              "        self.lin = torch.nn.Linear(3, 3)\n    def forward(self, x):\n        return {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    keys = []
    for body in ("self.lin(x)", "self.lin(x) * 2"):
        (tmp_path / "edited_net.py").write_text(source.format(body=body))
        sys.modules.pop("edited_net", None)
        module = importlib.import_module("edited_net")
        torch.manual_seed(0)
        keys.append(cache_key(module.Net(), "net", torch.zeros(1, 3)))
    sys.modules.pop("edited_net", None)
    assert keys[0] != keys[1]
