"""Cost of generating motion from speech, per second of audio, at the paper's model size.

    python bench/sample.py [--seconds 8] [--threads 1] [--repeats 2] [--device cpu]

The denoiser is the paper's (6 layers, 8 heads, width 512, W_pre 25, W_cur 100, 768-wide audio
features, 50 diffusion steps) with random weights: sampling cost does not depend on the weights'
values. It generates ``--seconds`` of motion (sliding windows, overlap cross-fade as
``training.sample`` runs it) with the DDPM sampler over all 50 steps and with DDIM at 10 and 25
steps, each with and without classifier-free guidance (which doubles the batch). Also timed once:
the audio encoder (wav2vec2-base architecture, random weights) and the preview video. Numbers are
compute seconds per second of audio (lower is faster; below 1 is faster than real time), the best
of ``--repeats`` runs. Writes bench/results/sample.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shards.format import FPS, SAMPLE_RATE
from training.diffusion import Diffusion, generate
from training.model import ModelConfig, MotionDenoiser

SETTINGS = [("ddpm", 50, 1.0), ("ddpm", 50, 2.0), ("ddim", 25, 1.0), ("ddim", 25, 2.0),
            ("ddim", 10, 1.0), ("ddim", 10, 2.0)]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="audio length (8 s = 2 windows)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sample.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cfg = ModelConfig()  # the paper's size
    torch.manual_seed(0)
    model = MotionDenoiser(cfg)
    torch.nn.init.normal_(model.out.weight, std=0.02)
    model = model.to(device).eval()
    diffusion = Diffusion(50)
    n_frames = round(args.seconds * FPS)
    feats = np.random.default_rng(0).normal(size=(n_frames, cfg.audio_dim)).astype(np.float32)
    n_params = sum(p.numel() for p in model.parameters())

    rows = []
    for sampler, steps, cfg_scale in SETTINGS:
        def run(sampler: str = sampler, steps: int = steps, cfg_scale: float = cfg_scale) -> torch.Tensor:
            return generate(model, diffusion, feats, n_steps=steps, sampler=sampler,
                            cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(0))
        run()  # warm-up
        seconds = best_time(run, args.repeats)
        rows.append({"stage": "generate", "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale,
                     "seconds": seconds, "s_per_audio_s": seconds / args.seconds})
        print(f"{sampler} {steps} steps cfg {cfg_scale}: {seconds / args.seconds:.3f} s per audio s",
              flush=True)

    from models.audio_encoder import AudioEncoder
    from training.preview import render_preview

    audio = (0.1 * np.random.default_rng(1).standard_normal(int(args.seconds * SAMPLE_RATE))
             ).astype(np.float32)
    encoder = AudioEncoder("random", device=args.device)  # wav2vec2-base architecture
    encoder.encode(audio[:SAMPLE_RATE], FPS)
    seconds = best_time(lambda: encoder.encode(audio, n_frames), args.repeats)
    rows.append({"stage": "audio_features", "model": encoder.model_id, "seconds": seconds,
                 "s_per_audio_s": seconds / args.seconds})
    vector = np.zeros((n_frames, 70), np.float32)
    vector[:, 63] = 1.5
    preview = Path(args.out).with_name(".bench_preview.mp4")
    seconds = best_time(lambda: render_preview(vector, audio, preview), 1)
    preview.unlink(missing_ok=True)
    rows.append({"stage": "preview", "seconds": seconds, "s_per_audio_s": seconds / args.seconds})

    result = {
        "benchmark": "sample", "audio_seconds": args.seconds, "n_frames": n_frames,
        "model": {**cfg.to_dict(), "parameters": n_params, "diffusion_steps": diffusion.steps},
        "device": str(device), "torch_threads": args.threads, "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "torch": torch.__version__, "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)

    print("\n| stage | sampler | steps | CFG | s compute per s audio |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        if row["stage"] == "generate":
            cfg_text = "yes (2.0)" if row["cfg_scale"] != 1.0 else "no"
            print(f"| generate | {row['sampler']} | {row['steps']} | {cfg_text} | {row['s_per_audio_s']:.3f} |")
        else:
            print(f"| {row['stage']} | | | | {row['s_per_audio_s']:.3f} |")
    print(f"\n{args.seconds:g} s of audio, {args.device}, {args.threads} torch thread(s), "
          f"load average {result['machine']['load_avg_1m']:.1f}; written to {out}")


if __name__ == "__main__":
    main()
