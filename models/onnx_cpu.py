"""Run a model's forward pass through ONNX Runtime on CPU, exported once and cached on disk.

Why: on a CPU, ONNX Runtime's fused and blocked kernels run these convolutional networks faster
than PyTorch eager with the same float32 weights (the ratios are in ``bench/results/models.json``),
and the outputs agree within 1e-5 (``tests/test_onnx_cpu.py``). The export
(``torch.onnx.export``, a few seconds) happens once per model, weights, model code and torch
version: the file is cached under a key hashed from all four, so every later worker on the
machine just loads it. A GPU keeps PyTorch (autocast fp16).
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)
# Opset 20 has Gelu, which ONNX Runtime fuses with the bias before it (BiasGelu); at 18 the erf
# form stays five separate elementwise passes.
OPSET = 20


def default_cache_dir() -> Path:
    """``$TH_ONNX_CACHE``, else ``$XDG_CACHE_HOME/talkinghead-shards/onnx`` (``~/.cache`` by default)."""
    if os.environ.get("TH_ONNX_CACHE"):
        return Path(os.environ["TH_ONNX_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "talkinghead-shards" / "onnx"


def writable(folder: Path) -> Path:
    """``folder``, or a folder in the system temp dir when it cannot be created or written (a
    read-only home on some cluster images): the export then happens once per boot, not never."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "talkinghead-shards-onnx"
    log.warning("ONNX cache %s is not writable; using %s", folder, fallback)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def cache_key(module: nn.Module, name: str, example: torch.Tensor) -> str:
    """Hash of everything the exported graph depends on: weights, the code of the module's forward
    (its source file), input layout, torch, opset."""
    digest = hashlib.sha256(f"{name}|{torch.__version__}|{OPSET}|{tuple(example.shape[1:])}|"
                            f"{example.dtype}".encode())
    try:
        digest.update(inspect.getsource(inspect.getmodule(type(module))).encode())
    except (OSError, TypeError):  # no source file (an interactive session): the class name only
        digest.update(type(module).__qualname__.encode())
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def export(module: nn.Module, example: torch.Tensor, output_names: Sequence[str], path: Path) -> None:
    """Export ``module(x)`` with a dynamic batch axis, written atomically to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["x"], output_names=list(output_names),
                                    dynamic_shapes=({0: batch},), verbose=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        program.save(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OnnxCpu:
    """``module(x)`` (one float32 tensor in, one tensor or a dict of tensors out) on ONNX Runtime.

    Called like the module: tensors in, tensors out. ``device`` and ``dtype`` say where inputs go.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, module: nn.Module, example: torch.Tensor, name: str,
                 output_names: Sequence[str] | None = None, threads: int = 1,
                 cache_dir: str | Path | None = None):
        import onnxruntime as ort  # imported here: only CPU workers need it

        self.output_names = list(output_names) if output_names else ["y"]
        self.returns_dict = output_names is not None
        module = module.to("cpu", torch.float32).eval()
        path = writable(Path(cache_dir or default_cache_dir())) / f"{name}-{cache_key(module, name, example)}.onnx"
        if not path.is_file():
            log.info("exporting %s to ONNX at %s (once per weights and torch version)", name, path)
            export(module, example, self.output_names, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt, not fatal
            log.warning("cached ONNX file %s does not load (%s); exporting it again", path, exc)
            export(module, example, self.output_names, path)
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        arrays = self.session.run(self.output_names, {"x": np.ascontiguousarray(x.detach().cpu().numpy(),
                                                                                 dtype=np.float32)})
        tensors = [torch.from_numpy(a) for a in arrays]
        return dict(zip(self.output_names, tensors)) if self.returns_dict else tensors[0]


def placement(model) -> tuple[torch.device, torch.dtype]:
    """Where a model's inputs must go, and in which dtype: a torch module's parameters say, any
    other runner (``OnnxCpu`` or a bundle of them) carries ``device`` and ``dtype``."""
    if not isinstance(model, nn.Module):
        return model.device, model.dtype
    param = next(model.parameters())
    return param.device, param.dtype


def use_onnx(cfg: Mapping, device: str) -> bool:
    """``models.cpu_runtime: onnxruntime`` (default) on a CPU worker; PyTorch otherwise."""
    return not str(device).startswith("cuda") and cfg["models"].get("cpu_runtime", "onnxruntime") == "onnxruntime"
