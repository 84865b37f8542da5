"""Frames per second of LivePortrait's renderer, warping network W + SPADE decoder G (one 512x512
frame = one W and one G forward), with random weights of the official architectures.

CPU: PyTorch eager fp32 one frame at a time (the baseline), eager batched, and the fast CPU forward
(``models.liveportrait.render_cpu``) one frame at a time and batched, with the largest absolute
difference of its outputs from eager fp32. CUDA (``--device cuda``): eager fp32 one at a time and
batched, fp16 and bf16 autocast batched, with their difference from fp32.

    python bench/render.py [--frames 2] [--batch 2] [--threads 2] [--device cpu] [--out FILE]

Writes bench/results/render.json (render_gpu.json for cuda) and prints a markdown table. On a CPU
shared with other jobs, wall time varies from run to run: the report also gives the process's CPU
time per thread, which varies less, and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.liveportrait.render_cpu import fast_cpu, nnpack_available
from models.liveportrait.spade_generator import load_spade_generator
from models.liveportrait.warping_network import load_warping_network

RESULTS = ROOT / "bench" / "results"
REPEATS = 2


def inputs(n: int, device: str, side: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A source feature volume and per-frame keypoints near it (what W sees for a talking head);
    ``side`` 64 is the real 512x512 frame, smaller sides are for quick code-path checks."""
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 32, 16, side, side, generator=gen).expand(n, -1, -1, -1, -1).contiguous()
    x_s = (torch.rand(1, 21, 3, generator=gen) * 1.2 - 0.6).expand(n, -1, -1).contiguous()
    x_d = x_s + 0.05 * torch.randn(n, 21, 3, generator=gen)
    return feature.to(device), x_d.to(device), x_s.to(device)


def render(warp, decode, feature, x_d, x_s, batch: int, amp: torch.dtype | None = None) -> torch.Tensor:
    """W then G over the frames in chunks of ``batch`` (autocast ``amp`` on CUDA)."""
    outs = []
    with torch.inference_mode(), torch.autocast(feature.device.type, dtype=amp or torch.float16,
                                                enabled=amp is not None):
        for i in range(0, len(x_d), batch):
            warped = warp(feature[i:i + batch], kp_driving=x_d[i:i + batch], kp_source=x_s[i:i + batch])
            outs.append(decode(warped["out"]).float())
    return torch.cat(outs)


def timed(fn, device: str) -> tuple[float, float, torch.Tensor]:
    """Best wall seconds and best CPU seconds per torch thread of ``REPEATS`` runs after a warm-up."""
    result = fn()
    best_wall = best_cpu = float("inf")
    for _ in range(REPEATS):
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, (time.process_time() - cpu) / torch.get_num_threads())
    return best_wall, best_cpu, result


def row(path: str, batch: int, frames: int, wall: float, cpu: float, diff: float | None, note: str = "") -> dict:
    return {"path": path, "batch": batch, "frames": frames, "seconds": round(wall, 3),
            "frames_per_s": round(frames / wall, 4), "cpu_seconds_per_thread": round(cpu, 3),
            "frames_per_cpu_s": round(frames / cpu, 4) if cpu > 0 else None,
            "max_abs_diff_vs_eager_fp32": None if diff is None else float(f"{diff:.3g}"), "note": note}


def bench_cpu(frames: int, batch: int) -> tuple[list[dict], dict]:
    warp, decode = load_warping_network("random"), load_spade_generator("random")
    fast_warp, fast_decode = fast_cpu(warp), fast_cpu(decode)
    feature, x_d, x_s = inputs(frames, "cpu")
    rows = []
    wall, cpu, reference = timed(lambda: render(warp, decode, feature, x_d, x_s, 1), "cpu")
    rows.append(row("eager fp32", 1, frames, wall, cpu, 0.0, "baseline"))
    wall, cpu, out = timed(lambda: render(warp, decode, feature, x_d, x_s, batch), "cpu")
    rows.append(row("eager fp32", batch, frames, wall, cpu, (out - reference).abs().max().item()))
    for b in (1, batch):
        wall, cpu, out = timed(lambda b=b: render(fast_warp, fast_decode, feature, x_d, x_s, b), "cpu")
        rows.append(row("fast cpu (NNPACK, folded, fused)", b, frames, wall, cpu,
                        (out - reference).abs().max().item(),
                        "" if nnpack_available() else "NNPACK missing: F.conv2d fallback"))
    # W's own outputs, one frame: the fast path against eager
    with torch.inference_mode():
        a = warp(feature[:1], kp_driving=x_d[:1], kp_source=x_s[:1])
        b = fast_warp(feature[:1], kp_driving=x_d[:1], kp_source=x_s[:1])
    w_diff = {k: float(f"{(a[k] - b[k]).abs().max().item():.3g}") for k in a}
    base = rows[0]
    summary = {"speedup_fast_vs_eager_b1_wall": {f"batch {r['batch']}": round(r["frames_per_s"] / base["frames_per_s"], 3)
                                                  for r in rows[2:]},
               "speedup_fast_vs_eager_b1_cpu": {f"batch {r['batch']}": round(r["frames_per_cpu_s"] / base["frames_per_cpu_s"], 3)
                                                 for r in rows[2:]},
               "warping_outputs_max_abs_diff_fast_vs_eager": w_diff}
    return rows, summary


def bench_cuda(frames: int, batch: int) -> tuple[list[dict], dict]:
    warp, decode = load_warping_network("random", device="cuda"), load_spade_generator("random", device="cuda")
    feature, x_d, x_s = inputs(frames, "cuda")
    rows = []
    wall, cpu, reference = timed(lambda: render(warp, decode, feature, x_d, x_s, 1), "cuda")
    rows.append(row("eager fp32", 1, frames, wall, cpu, 0.0, "baseline"))
    wall, cpu, out = timed(lambda: render(warp, decode, feature, x_d, x_s, batch), "cuda")
    rows.append(row("eager fp32", batch, frames, wall, cpu, (out - reference).abs().max().item()))
    for name, amp in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        wall, cpu, out = timed(lambda amp=amp: render(warp, decode, feature, x_d, x_s, batch, amp), "cuda")
        rows.append(row(f"eager {name} autocast", batch, frames, wall, cpu, (out - reference).abs().max().item()))
    return rows, {"gpu": torch.cuda.get_device_name()}


def markdown(rows: list[dict]) -> str:
    lines = ["| path | batch | frames | seconds | frames/s | CPU s/thread | max abs diff vs eager fp32 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['path']} | {r['batch']} | {r['frames']} | {r['seconds']:.2f} | {r['frames_per_s']:.3f} | "
              f"{r['cpu_seconds_per_thread']:.2f} | {r['max_abs_diff_vs_eager_fp32']} |" for r in rows]
    return "\n".join(lines)


def end_to_end(frames: int, device: str) -> dict:
    """``training.animate`` on a real portrait and template (random weights): crop, M and F once,
    composition, W + G, paste-back and H.264; seconds of compute per second of video."""
    import tempfile

    from pipeline.media import media_available, media_dir
    from training.animate import build_parser, animate

    if not media_available():
        return {"skipped": f"real media not found at {media_dir()}"}
    media = media_dir()
    with tempfile.TemporaryDirectory() as tmp:
        args = build_parser().parse_args([
            "--motion", str(media / "lp_template_d7.pkl"), "--image", str(media / "lp_portrait_s12.jpg"),
            "--out", f"{tmp}/out.mp4", "--max-frames", str(frames), "--random-weights", "--no-progress",
            "--device", device, "--batch-size", "1" if device == "cpu" else "16"])
        result = animate(args)
    return {"frames": result["n_frames"], "video_s": result["seconds"], "load_s": round(result["load_s"], 2),
            "render_s": round(result["render_s"], 2),
            "compute_s_per_video_s": round(result["compute_per_video_s"], 2),
            "render_s_per_video_s": round(result["render_s"] / result["seconds"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=2, help="frames per measurement")
    parser.add_argument("--batch", type=int, default=2, help="frames per call in the batched rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--end-to-end-frames", type=int, default=4,
                        help="frames of the end-to-end training.animate run (0: skip it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / ("render.json" if args.device == "cpu" else "render_gpu.json")
    load_before = os.getloadavg()[0]
    rows, summary = (bench_cpu if args.device == "cpu" else bench_cuda)(args.frames, args.batch)
    report = {
        "bench": "render (LivePortrait W + G, one 512x512 frame each)",
        "device": args.device,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "nnpack": nnpack_available(),
        "weights": "random (official architectures; speed does not depend on the values)",
        "timing": f"best of {REPEATS} runs after a warm-up; CPU seconds are process time / torch threads",
        "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
        **summary,
        "end_to_end": end_to_end(args.end_to_end_frames, args.device) if args.end_to_end_frames else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows))
    print(json.dumps(summary, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
