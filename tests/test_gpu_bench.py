"""``bench/gpu.py --dry-run``: the GPU command's whole code path on the CPU at tiny sizes, so the
command is known to work before any GPU time is spent; and the random-weight Q-Align it runs.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_every_key_of_the_full_run_with_sane_values(media, tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    sys.path.insert(0, str(ROOT))
    from bench.gpu import expected_keys, key_paths

    for name in ("trainer", "renderer", "job"):
        assert report[name]["status"] == "ok", (name, report[name].get("error"), report[name].get("log_tail"))
    assert report["dry_run"] is True
    assert key_paths({k: v for k, v in report.items() if k != "schema"}) == expected_keys()
    assert report["schema"] == {"missing": [], "extra": []}

    trainer = report["trainer"]
    for config in ("paper", "public_trainer"):
        for variant in ("fp32", "bf16_autocast", "bf16_compiled"):
            r = trainer[config][variant]
            assert r["windows_per_s"] > 0 and 0 < r["step_s_best"] <= r["step_s_median"]
            assert math.isclose(r["windows_per_s"], trainer[config]["batch"] / r["step_s_best"], rel_tol=0.01)
            assert set(r["phases_s"]) == {"forward", "backward", "optimizer"}
    assert trainer["public_trainer"]["public_code_wav2vec2_fp32"]["windows_per_s"] > 0
    assert trainer["summary"]["paper_best_variant"] in ("fp32", "bf16_autocast", "bf16_compiled")

    rows = report["renderer"]["rows"]
    assert [r["precision"] for r in rows] == ["fp32"]  # half precision is for the GPU run (see renderer())
    assert rows[0]["frames_per_s"] > 0 and report["renderer"]["frame_px"] == 256
    assert rows[0]["max_abs_diff_vs_fp32"] == 0.0  # fp32 at batch 1 is the reference itself
    animate = report["renderer"]["animate"]
    assert animate["frames"] >= 1 and animate["rtf_with_model_loading"] > animate["rtf_models_loaded"] > 0

    job = report["job"]
    assert job["qalign"]["size"] == "tiny" and job["qalign"]["parameters"] > 1e6
    assert job["clips"] >= 1 and job["video_s"] >= 3
    assert job["hours_video_per_gpu_hour_running"] >= job["hours_video_per_gpu_hour_end_to_end"] > 0
    assert job["stage_seconds"]["quality"] > 0  # Q-Align really ran on every clip
    assert job["gpu_busy_fraction"] is None and job["gpu_busy_error"] == "no CUDA device"
    assert job["bounding_pool"] in ("cpu", "model") and job["bounding_stage"] in job["stage_seconds"]

    goals = report["goals"]
    assert set(goals) == {"trainer_paper_windows_per_s", "trainer_paper_over_public_step",
                          "renderer_rtf_models_loaded", "job_hours_video_per_gpu_hour_running"}
    for g in goals.values():  # tiny CPU figures miss every goal, and each names what bounds it
        assert g["value"] is not None and g["met"] is False and g["bound_by"]


def test_random_qalign_scores_frames_through_the_quality_filter():
    from filters.quality import QualityScorer

    scorer = QualityScorer("qalign", n_frames=3, device="cpu", random_qalign="tiny")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 40, 60, 3), dtype=np.uint8)
    score, per_frame = scorer.score(frames)
    assert per_frame.shape == (3,) and np.all((per_frame >= 1) & (per_frame <= 5))  # pyiqa's 1..5 weighting
    assert score == pytest.approx(float(per_frame.mean()), rel=1e-3)
    assert scorer.weight_id.endswith(":qalign:random:tiny:seed0")
    video = scorer.model.video_score(frames[:3])  # the multi-image prompt of training.metrics.qalign
    assert 1 <= video <= 5
    with pytest.raises(ValueError, match="qalign"):
        QualityScorer("piqe", device="cpu", random_qalign="tiny")


def test_full_size_random_qalign_is_the_8b_architecture():
    """Counted on the meta device (no memory): mPLUG-Owl2's 8.2e9 parameters, 16.4 GB in fp16;
    the prompt as long as with LLaMA's tokenizer within a few tokens, the image 64 queries + 1."""
    from models.qalign_random import describe

    full = describe("full")
    assert 8.1e9 < full["parameters"] < 8.3e9 and full["image_tokens"] == 65
    assert 25 <= full["prompt_text_tokens"] <= 40
    assert describe("tiny")["parameters"] < 1e7
