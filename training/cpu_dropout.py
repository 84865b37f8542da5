"""Dropout with a cheaper random mask on CPU: one 64-bit draw decides four elements.

torch's CPU dropout draws a double-precision uniform number per element (two Mersenne-Twister
words); a profile of one training step at the public trainer's configuration spent 26% of its time
there. Here every element gets 16 random bits of a full-range 64-bit draw shared by four elements,
and is kept when they are at or above ``round(p * 2**16)`` (counted from the bottom of the int16
range): a Bernoulli mask with ``p`` rounded to a multiple of 2**-16 (0.1 -> 0.100006), rescaled by
the exact ``1 / (1 - p)`` of that mask, so the expectation is unchanged. On other devices torch's own
kernel runs (CUDA's Philox dropout is already cheap). The bits come from the default generator, so
``torch.manual_seed`` makes runs repeatable as before.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

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
    """Whether the cheaper mask applies to ``x`` (CPU tensors, outside :func:`torch_kernels`)."""
    return x.device.type == "cpu" and not _use_torch_kernels


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """(bool mask of ``shape``, True with probability 1 - p rounded to 2**-16; the rescaling 1 / (1 - p))."""
    drop_levels = round(p * LEVELS)
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    bits = words.view(torch.int16)[:count].view(shape)
    return bits >= drop_levels - LEVELS // 2, LEVELS / (LEVELS - drop_levels)


def dropout(x: torch.Tensor, p: float, training: bool,
            shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the cheaper mask on CPU. ``shape``: one decision per
    element of that shape, broadcast over ``x`` (e.g. a whole attention head at once)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if cheaper_on(x):
        keep, scale = keep_mask(shape or x.shape, p, x.device)
        return torch.where(keep, x * scale, 0.0)
    if shape is None:
        return F.dropout(x, p, True)
    return x * torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p) / (1.0 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask as :func:`dropout` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
