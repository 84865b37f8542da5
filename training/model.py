"""The denoising network of JoyVASA's second stage: a transformer decoder that predicts clean
LivePortrait motion (70 dims a frame: 63 expression, scale, translation, pitch/yaw/roll) from noisy
motion and frame-aligned speech features. The paper's size: 6 layers, 8 heads, width 512, windows
of 25 context + 100 generated frames at 25 fps. Details of the layout follow.

One window holds ``w_pre`` frames of previous-window context followed by ``w_cur`` frames to
generate (paper §3.3.1, eq. 2). The decoder's self-attention runs over two kinds of motion token:

* ``w_pre`` *context* tokens: the clean motion of the previous window (or, for the first window of a
  clip, learnable start tokens), and
* ``w_pre + w_cur`` *noisy* tokens: the diffused motion of the whole window at step ``t``.

Context and noisy tokens of the same frame share that frame's positional encoding and differ by a
learned type embedding; the diffusion-step embedding (sinusoid then MLP) is added to every token.
Self-attention is bidirectional: a denoiser sees the whole window at once.

Cross-attention reads the frame-aligned audio features (the previous part's audio, or learnable
start tokens for a first window, then the current audio). Each motion token may attend only to the
audio of its own frame (``audio_radius=0``, as the public JoyVASA code does): audio and motion are
sampled at the same 25 fps, so alignment is known and need not be learned, and the decoder's
self-attention spreads audio context across frames. ``audio_radius=k`` widens this to ``+-k``
frames. For classifier-free guidance the whole audio sequence is replaced by a learned null token.

With ``audio_radius=0`` each query's softmax runs over a single key, so its weight is exactly 1 and
the cross-attention output is the value projection of the frame's own audio token: the layers
compute that directly (:meth:`DecoderLayer.own_frame_attention`), the same function at a fraction
of the cost; attention dropout then drops that single weight per head and query, as the masked
attention would. ``MotionDenoiser.single_key_cross_attention = False`` runs the masked attention
instead (the reference the tests compare against). The layers keep the parameter names of
``nn.TransformerDecoderLayer``, so weights load into either. In CPU training every dropout (the
attention weights' included, so self-attention is then computed in the layer) draws its mask the
cheaper way of :mod:`training.cpu_dropout`.

The network predicts ``x0`` for all ``w_pre + w_cur`` frames; the output layer starts at zero, so
an untrained model predicts the dataset mean (zero in normalised units).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training import cpu_dropout, retired
from training.retired import drop_retired


@dataclass(frozen=True)
class ModelConfig:
    motion_dim: int = 70
    audio_dim: int = 768
    width: int = 512
    layers: int = 6
    heads: int = 8
    ff_mult: int = 4
    dropout: float = 0.1
    w_pre: int = 25
    w_cur: int = 100
    audio_radius: int = 0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.w_cur < self.w_pre:
            raise ValueError(f"w_cur ({self.w_cur}) must be >= w_pre ({self.w_pre}): each window's "
                             "context is taken from the window before it")
        if min(self.motion_dim, self.audio_dim, self.width, self.layers, self.heads,
               self.ff_mult, self.w_pre, self.w_cur) < 1 or self.audio_radius < 0:
            raise ValueError(f"model sizes must be positive: {self}")

    @property
    def window(self) -> int:
        """Frames per window: previous context plus current part."""
        return self.w_pre + self.w_cur

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """From a run config or a checkpoint's ``model_config`` (removed options dropped when off)."""
        values = drop_retired(values, retired.MODEL, "model")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoids: positions (N,) -> (N, dim), sin in the first half, cos in the second."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32,
                                                         device=positions.device) / half)
    angles = positions.float()[:, None] * freqs[None]
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        enc = torch.nn.functional.pad(enc, (0, 1))
    return enc


def audio_attention_mask(w_pre: int, window: int, radius: int) -> torch.Tensor:
    """Boolean (w_pre + window, window) mask, True where a motion token may NOT attend an audio frame.

    Rows are the context tokens (frames 0..w_pre-1) then the noisy tokens (frames 0..window-1);
    each row may see the audio frames within ``radius`` of its own frame.
    """
    token_frame = torch.cat([torch.arange(w_pre), torch.arange(window)])
    audio_frame = torch.arange(window)
    return (token_frame[:, None] - audio_frame[None, :]).abs() > radius


class DecoderLayer(nn.Module):
    """A pre-norm transformer decoder layer (self-attention, cross-attention, GELU MLP), computed
    as ``nn.TransformerDecoderLayer(norm_first=True, batch_first=True)`` does, with the same
    parameter names, plus the single-key cross-attention of ``audio_radius=0``."""

    def __init__(self, width: int, heads: int, ff_width: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(width, ff_width)
        self.linear2 = nn.Linear(ff_width, width)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.dropout = cpu_dropout.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = (cpu_dropout.Dropout(dropout) for _ in range(3))

    def self_attention(self, h: torch.Tensor) -> torch.Tensor:
        """``self_attn(h, h, h)``; in CPU training with dropout, computed here so the attention
        weights are dropped with the cheaper mask of :mod:`training.cpu_dropout` (the same softmax,
        dropout of the weights and value average as torch's math kernel)."""
        attn = self.self_attn
        if not (self.training and attn.dropout > 0 and cpu_dropout.cheaper_on(h)):
            return attn(h, h, h, need_weights=False)[0]
        batch, length, width = h.shape
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias) \
            .view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q * (width // self.heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)
        out = cpu_dropout.dropout(weights, attn.dropout, True) @ v
        return attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))

    def own_frame_attention(self, memory: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Cross-attention when every query sees exactly one audio frame, ``rows[i]`` for query i.

        The softmax over one key is 1, so the output is ``out_proj(value(memory[rows]))``; in
        training, attention dropout zeroes that weight per (sample, query, head) with the masked
        attention's probability and rescaling.
        """
        attn = self.multihead_attn
        width = memory.shape[-1]
        value = F.linear(memory, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
        value = value.index_select(1, rows)
        if self.training and attn.dropout > 0:
            batch, length = value.shape[:2]
            heads = value.view(batch, length, self.heads, -1)
            value = cpu_dropout.dropout(heads, attn.dropout, True, shape=(batch, length, self.heads, 1))
            value = value.reshape(batch, length, width)
        return attn.out_proj(value)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                own_frame_rows: torch.Tensor | None) -> torch.Tensor:
        """``own_frame_rows`` given: the single-key cross-attention; None: the masked attention."""
        h = self.norm1(x)
        x = x + self.dropout1(self.self_attention(h))
        if own_frame_rows is None:
            h = self.norm2(x)
            cross = self.multihead_attn(h, memory, memory, attn_mask=memory_mask, need_weights=False)[0]
        else:
            # The queries (norm2's output) cannot change a softmax over one key: norm2's gradient is
            # exactly zero in the masked attention too. Saying so keeps DDP's every-parameter-has-a-
            # gradient check (and the optimiser's state) as they were.
            cross = self.own_frame_attention(memory, own_frame_rows) \
                + 0.0 * (self.norm2.weight.sum() + self.norm2.bias.sum())
        x = x + self.dropout2(cross)
        h = self.norm3(x)
        return x + self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(h)))))


class Decoder(nn.Module):
    """The layer stack and final norm, named as ``nn.TransformerDecoder`` names them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg.width, cfg.heads, cfg.ff_mult * cfg.width, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                own_frame_rows: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens, memory, memory_mask, own_frame_rows)
        return self.norm(tokens)


class MotionDenoiser(nn.Module):
    """``forward(x_t, t, prev_motion, audio, first_window, drop_audio) -> x0_hat``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        width, window = cfg.width, cfg.window
        self.noisy_in = nn.Linear(cfg.motion_dim, width)
        self.context_in = nn.Linear(cfg.motion_dim, width)
        self.audio_in = nn.Linear(cfg.audio_dim, width)
        self.start_motion = nn.Parameter(0.02 * torch.randn(cfg.w_pre, cfg.motion_dim))
        self.start_audio = nn.Parameter(0.02 * torch.randn(cfg.w_pre, cfg.audio_dim))
        self.null_audio = nn.Parameter(0.02 * torch.randn(cfg.audio_dim))
        self.token_type = nn.Parameter(0.02 * torch.randn(2, width))  # 0: context, 1: noisy
        self.step_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.decoder = Decoder(cfg)
        self.out = nn.Linear(width, cfg.motion_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("frame_pos", sinusoidal_encoding(torch.arange(window), width),
                             persistent=False)
        self.register_buffer("memory_mask", audio_attention_mask(cfg.w_pre, window, cfg.audio_radius),
                             persistent=False)
        # The audio frame each token reads (context frames, then the window's): radius 0 only.
        self.register_buffer("own_frame_rows", torch.cat([torch.arange(cfg.w_pre), torch.arange(window)]),
                             persistent=False)
        self.single_key_cross_attention = cfg.audio_radius == 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prev_motion: torch.Tensor,
                audio: torch.Tensor, first_window: torch.Tensor,
                drop_audio: torch.Tensor) -> torch.Tensor:
        """Predict clean motion for the whole window.

        x_t (B, w_pre+w_cur, motion_dim) noisy motion; t (B,) integer diffusion steps;
        prev_motion (B, w_pre, motion_dim) clean motion of the previous window's last frames;
        audio (B, w_pre+w_cur, audio_dim) frame-aligned, normalised features;
        first_window (B,) bool: replace prev_motion and the previous part of ``audio`` by start tokens;
        drop_audio (B,) bool: replace all audio by the null token. Returns (B, w_pre+w_cur, motion_dim).
        """
        cfg = self.cfg
        batch = x_t.shape[0]
        expected = {"x_t": (batch, cfg.window, cfg.motion_dim),
                    "prev_motion": (batch, cfg.w_pre, cfg.motion_dim),
                    "audio": (batch, cfg.window, cfg.audio_dim)}
        for name, tensor in (("x_t", x_t), ("prev_motion", prev_motion), ("audio", audio)):
            if tuple(tensor.shape) != expected[name]:
                raise ValueError(f"{name} must have shape {expected[name]}, got {tuple(tensor.shape)}")

        first = first_window.view(batch, 1, 1).bool()
        prev_motion = torch.where(first, self.start_motion.to(prev_motion.dtype), prev_motion)
        prev_audio = torch.where(first, self.start_audio.to(audio.dtype), audio[:, :cfg.w_pre])
        audio = torch.cat([prev_audio, audio[:, cfg.w_pre:]], dim=1)
        audio = torch.where(drop_audio.view(batch, 1, 1).bool(), self.null_audio.to(audio.dtype), audio)

        step = self.step_mlp(sinusoidal_encoding(t, cfg.width))[:, None]
        context = self.context_in(prev_motion) + self.frame_pos[:cfg.w_pre] + self.token_type[0]
        noisy = self.noisy_in(x_t) + self.frame_pos + self.token_type[1]
        tokens = torch.cat([context, noisy], dim=1) + step
        memory = self.audio_in(audio) + self.frame_pos
        rows = self.own_frame_rows if self.single_key_cross_attention else None
        hidden = self.decoder(tokens, memory, self.memory_mask, rows)
        return self.out(hidden[:, cfg.w_pre:])
