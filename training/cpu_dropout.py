"""Dropout with a cheaper random mask on CPU: 16 random bits per element from numpy's SFC64.

torch's CPU dropout draws a double-precision uniform number per element (two Mersenne-Twister
words) and, in backward, runs a second masked pass, a large share of a CPU training step (the
profiles: docs/benchmarks.md, ``bench/train.py --only-model-speed``). Here every element gets 16
bits of one 64-bit word
of numpy's SFC64 generator (a quarter of the draws, at twice the rate of torch's CPU generator on
the same words), seeded per call from torch's default generator so ``torch.manual_seed`` still
repeats runs. An element is kept when its bits are at or above ``round(p * 2**16)`` (counted from
the bottom of the int16 range): a Bernoulli mask with ``p`` rounded to a multiple of 2**-16
(0.1 -> 0.100006), rescaled by the exact ``1 / (1 - p)`` of that mask, so the expectation is
unchanged. The mask is applied as one product with a 0/1 multiplier (whose backward is one more
product), not a ``where``, whose boolean condition is several times slower on CPU. On other devices
torch's own kernel runs (CUDA's Philox dropout is already cheap).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16  # 16 random bits per element
_use_torch_kernels = False


@contextlib.contextmanager
def torch_kernels() -> Iterator[None]:
    """Inside, torch's own dropout and attention kernels run: the reference benchmarks compare with."""
    global _use_torch_kernels
    before, _use_torch_kernels = _use_torch_kernels, True
    try:
        yield
    finally:
        _use_torch_kernels = before


def cheaper_on(x: torch.Tensor) -> bool:
    """Whether the cheaper mask applies to ``x``: CPU tensors, outside :func:`torch_kernels`, and not
    while ``torch.compile`` traces (its generated kernels draw dropout masks inside their own loops)."""
    return x.device.type == "cpu" and not _use_torch_kernels and not torch.compiler.is_compiling()


def random_bits(shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Uniform int16 bits of ``shape``, four per 64-bit SFC64 word, seeded from torch's default generator."""
    count = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)
    return torch.from_numpy(words.view(np.int16)[:count]).view(shape)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """(bool mask of ``shape``, True with probability 1 - p rounded to 2**-16; the rescaling 1 / (1 - p))."""
    drop_levels = round(p * LEVELS)
    return random_bits(shape) >= drop_levels - LEVELS // 2, LEVELS / (LEVELS - drop_levels)


def dropout(x: torch.Tensor, p: float, training: bool,
            shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the cheaper mask on CPU. ``shape``: one decision per
    element of that shape, broadcast over ``x`` (e.g. a whole attention head at once)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if cheaper_on(x):
        keep, scale = keep_mask(shape or x.shape, p)
        multiplier = keep.view(torch.uint8).to(x.dtype)  # 0/1; a uint8 view converts faster than bool
        if torch.finfo(x.dtype).bits >= 32:
            return x * multiplier.mul_(scale)
        # bf16/fp16 would round the scale itself (1.1111 -> 1.1094 in bf16): scale the product instead,
        # computed in fp32 and rounded per element, so the mean is kept.
        return x * multiplier * scale
    if shape is None:
        return F.dropout(x, p, True)
    return x * torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p) / (1.0 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask as :func:`dropout` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
