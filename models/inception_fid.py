"""Frame FID's feature network: pyiqa's FID Inception-v3 (pytorch-fid's port of TensorFlow's).

pyiqa's ``fid`` metric builds this network and fetches ``pt_inception-2015-12-05-6726825d.pth`` by
URL while doing so. Here it is built the same way, with the file taken from the weights registry
instead of the network (pyiqa loads a local path strictly, as it would the downloaded file); in
random mode nothing is loaded and the network keeps its random initialisation, loudly marked.
"""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
from torch import nn

from models.weights import RANDOM, warn_random, weight_id

FEATURE_DIM = 2048  # the final average pool: the features FID compares


def random_init(model: nn.Module, seed: int = 0) -> None:
    """He-normal weights (seeded), unit batch norms: activations keep their scale through the
    stack in eval mode. pyiqa builds the network with ``init_weights=False`` because it loads
    weights next; left so, its random pool features are all but constant, and a random-weights
    FID could not tell two frame sets apart."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()


def load_fid_model(weights: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """pyiqa's ``FID`` module (2048-d Inception pool features) with ``weight_id`` and ``variant`` set."""
    from pyiqa.archs import inception
    from pyiqa.archs.fid_arch import FID

    if str(weights) == RANDOM:
        warn_random("frame FID's Inception-v3")
        with mock.patch.object(inception, "load_pretrained_network", lambda *args, **kwargs: None):
            model = FID(dims=FEATURE_DIM)
        random_init(model)
        model.weight_id = RANDOM
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception weights not found: {path}")
        with mock.patch.object(inception, "FID_WEIGHTS_URL", str(path)):
            model = FID(dims=FEATURE_DIM)
        model.weight_id = weight_id(path)
    model.variant = ("pyiqa fid, clean mode (PIL bicubic resize to 299x299, Inception-v3 pool 2048-d, "
                     f"pytorch-fid's TF weights{', RANDOM weights' if model.weight_id == RANDOM else ''})")
    return model.to(device).eval()
