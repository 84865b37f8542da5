"""A faster CPU forward of the warping network W and the SPADE decoder G, same weights, same outputs.

Why not ONNX Runtime: both export (W's 5-D ``grid_sample`` becomes ONNX ``GridSample`` at opset 20
and runs), but ORT's convolutions are slower than PyTorch's oneDNN ones on this CPU (compare with
bench/render.py), and PyTorch's own convolutions already run near the CPU's GEMM speed. What is left is
doing less arithmetic: almost all of the time is in 3x3 and 7x7 convolutions, and PyTorch ships
NNPACK, whose inference path computes a 3x3 convolution with Winograd F(6x6, 3x3) and larger kernels
with 16x16 FFT tiles. So:

- every 2D 3x3/7x7 convolution at 16 px and up goes through NNPACK (one image at a time: its batched
  path is slower);
- W's 3D convolutions become 2D ones: the depth slices are laid side by side in one wide image
  (k // 2 zero columns between slices keep them apart), the kernel's depth taps become extra output
  channels, and shifted sums over depth finish the job;
- BatchNorm (eval) is folded into the convolution before it, spectral norm is applied once
  (``weight_orig / sigma`` with the stored vectors, as eval mode does per call), G's three SPADE
  ``mlp_shared`` convolutions of a block (same input) run as one, and each SPADE's gamma and beta
  convolutions as one; the upsampled modulation maps are made once per resolution;
- W's heatmaps use exp(a + b + c) = exp(a) exp(b) exp(c) over the grid's three axes.

Outputs agree with the eager modules within 1e-4 (Winograd's rounding is a few times float32's;
``tests/test_renderer_modules.py``, ``bench/render.py``). Where NNPACK is missing (not built in),
for other dtypes or on a GPU, the same code runs ``F.conv2d``. Build with ``fast_cpu(module)``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from models.liveportrait.blocks import make_coordinate_grid
from models.liveportrait.spade_generator import (
    LRELU_SLOPE,
    SPADEDecoder,
    SPADEResnetBlock,
)
from models.liveportrait.warping_network import KP_VARIANCE, WarpingNetwork

WIDE_MIN = 16  # convolutions at this height/width and up go through NNPACK; W's smaller 3D ones stay 3D


@functools.lru_cache(maxsize=1)
def nnpack_available() -> bool:
    """Whether this torch has NNPACK (the call also initialises it: without it every call fails)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


def conv2d_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Stride-1 2D convolution with 'same' zero padding, (B, C, H, W) -> (B, O, H, W)."""
    pad = weight.shape[-1] // 2
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.shape[-1] > 1
            and min(x.shape[-2:]) >= WIDE_MIN and nnpack_available()):
        outs = [torch._nnpack_spatial_convolution(xi[None].contiguous(), weight, bias, [pad, pad], [1, 1])
                for xi in x]
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    return F.conv2d(x, weight, bias, padding=pad)


def conv3d_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Stride-1 3D convolution with 'same' zero padding of one volume (C, D, H, W) -> (O, D, H, W).

    Large volumes run as one wide 2D image (C, H, D * (W + pad)) against the (K*O, C, K, K) kernel
    whose depth taps are output channels; output depth d sums tap kd of input slice d + kd - pad.
    """
    c, d, h, w = x.shape
    o, _, k = weight.shape[:3]
    pad = k // 2
    if h < WIDE_MIN or x.device.type != "cpu" or x.dtype != torch.float32 or not nnpack_available():
        return F.conv3d(x[None], weight, bias, padding=pad)[0]
    wide = F.pad(x.transpose(1, 2), (0, pad)).reshape(1, c, h, d * (w + pad))
    taps = weight.permute(2, 0, 1, 3, 4).reshape(k * o, c, k, k)
    y = torch._nnpack_spatial_convolution(wide, taps, None, [pad, pad], [1, 1])
    y = y.view(k, o, h, d, w + pad)[..., :w]
    out = y[pad].clone()
    for kd in range(k):
        shift = kd - pad
        if shift == 0:
            continue
        lo, hi = max(0, -shift), min(d, d - shift)
        out[:, :, lo:hi] += y[kd, :, :, lo + shift:hi + shift]
    out += bias.view(o, 1, 1, 1)
    return out.transpose(1, 2)  # (O, D, H, W), a view of the (O, H, D, W) result


def fold_batchnorm(conv: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``norm(conv(x))`` (BatchNorm in eval mode) as one convolution."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    return weight.detach().clone(), ((bias - norm.running_mean) * scale + norm.bias).detach().clone()


def spectral_weight(conv: nn.Module) -> torch.Tensor:
    """The weight eval mode uses: ``weight_orig / (u . W v)`` with the stored u, v (no iteration)."""
    for hook in conv._forward_pre_hooks.values():
        if isinstance(hook, SpectralNorm):
            return hook.compute_weight(conv, do_power_iteration=False).detach().clone()
    return conv.weight.detach().clone()


def gaussian(kp: torch.Tensor, spatial: tuple[int, int, int]) -> torch.Tensor:
    """kp2gaussian for one sample's keypoints (K, 3) -> (K, D, H, W), as a product over the axes."""
    d, h, w = spatial
    def axis(n: int, coord: torch.Tensor) -> torch.Tensor:
        grid = 2 * (torch.arange(n, dtype=kp.dtype, device=kp.device) / (n - 1)) - 1
        return torch.exp(-0.5 * (grid[None] - coord[:, None]) ** 2 / KP_VARIANCE)   # (K, n)
    gx, gy, gz = axis(w, kp[:, 0]), axis(h, kp[:, 1]), axis(d, kp[:, 2])
    return gz[:, :, None, None] * gy[:, None, :, None] * gx[:, None, None, :]


class FastWarpingNetwork(nn.Module):
    """W's forward from a loaded ``WarpingNetwork``: same arguments, same returned dict."""

    def __init__(self, net: WarpingNetwork):
        super().__init__()
        dm = net.dense_motion_network
        self.num_kp = dm.num_kp
        self.weight_id = getattr(net, "weight_id", "random")
        self.compress = fold_batchnorm(dm.compress, dm.norm)
        self.down = [fold_batchnorm(b.conv, b.norm) for b in dm.hourglass.encoder.down_blocks]
        self.up = [fold_batchnorm(b.conv, b.norm) for b in dm.hourglass.decoder.up_blocks]
        self.final = fold_batchnorm(dm.hourglass.decoder.conv, dm.hourglass.decoder.norm)
        self.mask = (dm.mask.weight.detach().clone(), dm.mask.bias.detach().clone())
        self.occlusion = (None if dm.occlusion is None else
                          (dm.occlusion.weight.detach().clone(), dm.occlusion.bias.detach().clone()))
        self.third = fold_batchnorm(net.third.conv, net.third.norm)
        self.third_slope = net.third.ac.negative_slope
        self.fourth = (net.fourth.weight.detach().clone(), net.fourth.bias.detach().clone())
        self.flag_use_occlusion_map = net.flag_use_occlusion_map

    def hourglass(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for weight, bias in self.down:
            skips.append(F.avg_pool3d(conv3d_same(skips[-1], weight, bias).relu_()[None], (1, 2, 2))[0])
        out = skips.pop()
        for weight, bias in self.up:
            up = F.interpolate(out[None], scale_factor=(1.0, 2.0, 2.0), mode="nearest")[0]
            out = torch.cat([conv3d_same(up, weight, bias).relu_(), skips.pop()], dim=0)
        return conv3d_same(out, *self.final).relu_()

    def one(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor):
        """One sample: feature (C, D, H, W), keypoints (K, 3)."""
        _, d, h, w = feature.shape
        k = self.num_kp
        compressed = F.conv3d(feature[None], *self.compress)[0].relu_()              # (4, D, H, W)
        grid = make_coordinate_grid((d, h, w), kp_source)
        motions = torch.empty(k + 1, d, h, w, 3, dtype=feature.dtype, device=feature.device)
        motions[0] = grid
        torch.add(grid - kp_driving[:, None, None, None, :], kp_source[:, None, None, None, :], out=motions[1:])
        c = compressed.shape[0]
        inp = torch.empty(k + 1, c + 1, d, h, w, dtype=feature.dtype, device=feature.device)
        inp[0, 0] = 0
        torch.sub(gaussian(kp_driving, (d, h, w)), gaussian(kp_source, (d, h, w)), out=inp[1:, 0])
        inp[:, 1:] = F.grid_sample(compressed[None].expand(k + 1, c, d, h, w), motions, align_corners=False)
        prediction = self.hourglass(inp.view(-1, d, h, w))                           # (142, D, H, W)

        mask = torch.softmax(conv3d_same(prediction, *self.mask), dim=0)            # (22, D, H, W)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=0)                      # (D, H, W, 3)
        occlusion = None
        if self.occlusion is not None:
            flat = prediction.contiguous().view(1, -1, h, w)
            occlusion = torch.sigmoid(conv2d_same(flat, *self.occlusion))            # (1, 1, H, W)
        warped = F.grid_sample(feature[None], deformation[None], align_corners=False)
        out = conv2d_same(warped.view(1, -1, h, w), *self.third)
        out = F.conv2d(F.leaky_relu(out, self.third_slope), *self.fourth)
        if self.flag_use_occlusion_map and occlusion is not None:
            out = out * occlusion
        return occlusion, deformation, out

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor | None]:
        parts = [self.one(f, kd, ks) for f, kd, ks in zip(feature_3d, kp_driving, kp_source)]
        occlusion = None if parts[0][0] is None else torch.cat([p[0] for p in parts])
        return {"occlusion_map": occlusion, "deformation": torch.stack([p[1] for p in parts]),
                "out": torch.cat([p[2] for p in parts])}


class FastSPADEBlock:
    """One SPADEResnetBlock with its SPADE convolutions fused (same inputs, concatenated outputs)."""

    def __init__(self, block: SPADEResnetBlock):
        norms = [block.norm_0, block.norm_1] + ([block.norm_s] if block.learned_shortcut else [])
        self.hidden = norms[0].mlp_shared[0].out_channels
        self.shared = (torch.cat([n.mlp_shared[0].weight for n in norms]).detach().clone(),
                       torch.cat([n.mlp_shared[0].bias for n in norms]).detach().clone())
        self.gamma_beta = [(torch.cat([n.mlp_gamma.weight, n.mlp_beta.weight]).detach().clone(),
                            torch.cat([n.mlp_gamma.bias, n.mlp_beta.bias]).detach().clone()) for n in norms]
        self.eps = [n.param_free_norm.eps for n in norms]
        self.conv_0 = (spectral_weight(block.conv_0), block.conv_0.bias.detach().clone())
        self.conv_1 = (spectral_weight(block.conv_1), block.conv_1.bias.detach().clone())
        self.conv_s = spectral_weight(block.conv_s) if block.learned_shortcut else None

    def spade(self, i: int, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        actv = shared[:, i * self.hidden:(i + 1) * self.hidden]
        gamma_beta = conv2d_same(actv, *self.gamma_beta[i])
        gamma, beta = gamma_beta.chunk(2, dim=1)
        normalized = F.instance_norm(x, eps=self.eps[i])
        return normalized.mul_(gamma.add_(1)).add_(beta)

    def __call__(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shared = conv2d_same(seg, *self.shared).relu_()
        dx = conv2d_same(F.leaky_relu(self.spade(0, x, shared), LRELU_SLOPE), *self.conv_0)
        dx = conv2d_same(F.leaky_relu(self.spade(1, dx, shared), LRELU_SLOPE), *self.conv_1)
        shortcut = x if self.conv_s is None else F.conv2d(self.spade(2, x, shared), self.conv_s)
        return dx.add_(shortcut)


class FastSPADEDecoder(nn.Module):
    """G's forward from a loaded ``SPADEDecoder``: feature (B, 256, 64, 64) -> (B, 3, 512, 512)."""

    def __init__(self, net: SPADEDecoder):
        super().__init__()
        self.weight_id = getattr(net, "weight_id", "random")
        self.fc = (net.fc.weight.detach().clone(), net.fc.bias.detach().clone())
        self.middle = [FastSPADEBlock(getattr(net, f"G_middle_{i}")) for i in range(6)]
        self.up_0, self.up_1 = FastSPADEBlock(net.up_0), FastSPADEBlock(net.up_1)
        conv = net.conv_img[0] if isinstance(net.conv_img, nn.Sequential) else net.conv_img
        self.conv_img = (conv.weight.detach().clone(), conv.bias.detach().clone())
        self.shuffle = isinstance(net.conv_img, nn.Sequential)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = conv2d_same(feature, *self.fc)
        for block in self.middle:
            x = block(x, seg)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.up_0(x, F.interpolate(seg, size=x.shape[2:], mode="nearest"))
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.up_1(x, F.interpolate(seg, size=x.shape[2:], mode="nearest"))
        x = conv2d_same(F.leaky_relu(x, LRELU_SLOPE), *self.conv_img)
        if self.shuffle:
            x = F.pixel_shuffle(x, 2)
        return torch.sigmoid(x)


def fast_cpu(module: WarpingNetwork | SPADEDecoder) -> FastWarpingNetwork | FastSPADEDecoder:
    """The faster forward of a loaded W or G (eval mode, weights copied; the module is untouched)."""
    if isinstance(module, WarpingNetwork):
        return FastWarpingNetwork(module).eval()
    if isinstance(module, SPADEDecoder):
        return FastSPADEDecoder(module).eval()
    raise TypeError(f"no fast CPU forward for {type(module).__name__}")
