"""Speech -> LivePortrait template CLI: frame counts, seeds, preview video, bad input.

The checkpoint is a real one in the trainer's format (a small MotionDenoiser with non-zero output
weights, its EMA, the trainer's config) with normalisation statistics of the real motion templates;
audio features come from the real AudioEncoder with random weights of its small architecture.
"""
import math
import pickle
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from ema_pytorch import EMA

from configs import load_config, to_dict
from shards.vector import VECTOR_DIM
from training.checkpoint import save_checkpoint
from training.model import ModelConfig, MotionDenoiser
from training.sample import EXIT_BAD_INPUT, BadInputError, main, read_speech
from training.template import load_template, n_frames_for

REPO = Path(__file__).resolve().parents[1]
ENCODER_DIM = 64  # the AudioEncoder's "small" random architecture
TINY = ModelConfig(audio_dim=ENCODER_DIM, width=48, layers=2, heads=4, w_pre=5, w_cur=20, dropout=0.0)
FAST = ["--sampler", "ddim", "--steps", "2"]


def template_stats(media: Path, audio_dim: int, encoder: str | None = "random:small") -> dict:
    """Statistics in the pipeline's format: motion from the real templates, unit audio features."""
    from shards.vector import motion_to_vector
    from tests.motion_fixtures import template_motion

    vec = np.concatenate([motion_to_vector(template_motion(media / f"lp_template_{n}.pkl"))
                          for n in ("d5", "d7", "talking")]).astype(np.float64)
    stats = {"format_version": 1, "split": "train", "n_frames": len(vec), "n_clips": 3,
             "vector": {"dim": VECTOR_DIM, "mean": vec.mean(0).tolist(), "std": vec.std(0).tolist(),
                        "min": vec.min(0).tolist(), "max": vec.max(0).tolist()},
             "audio_feat": {"dim": audio_dim, "mean": [0.0] * audio_dim, "std": [1.0] * audio_dim}}
    if encoder:
        stats["audio_feat"]["encoder"] = encoder
    return stats


def write_checkpoint(path: Path, model: MotionDenoiser, stats: dict, diffusion_steps: int = 10,
                     ema_model: MotionDenoiser | None = None) -> Path:
    """A checkpoint with every key the trainer writes; EMA weights from ``ema_model`` (or ``model``)."""
    ema = EMA(ema_model or model, include_online_model=False)
    cfg = load_config("train", [f"diffusion.steps={diffusion_steps}"])
    return save_checkpoint(path, {
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": {}, "scheduler": {},
        "step": 0, "rng": [], "data_state": {}, "model_config": model.cfg.to_dict(),
        "stats": stats, "train_config": to_dict(cfg)})


def random_model(cfg: ModelConfig, seed: int) -> MotionDenoiser:
    torch.manual_seed(seed)
    model = MotionDenoiser(cfg)
    torch.nn.init.normal_(model.out.weight, std=0.2)  # an untrained model would output the mean only
    return model


@pytest.fixture(scope="module")
def checkpoint(media, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", random_model(TINY, 0),
                            template_stats(media, ENCODER_DIM))


@pytest.fixture(scope="module")
def speech_16k(media) -> np.ndarray:
    audio, rate = sf.read(media / "joyvasa_001.wav", dtype="float32")
    assert rate == 16000
    return audio


def write_speech(path: Path, speech_16k: np.ndarray, seconds: float, rate: int, channels: int = 1) -> Path:
    """Real speech cut/looped to ``seconds`` at ``rate`` Hz with ``channels`` channels."""
    need = int(round(seconds * 16000))
    mono = np.tile(speech_16k, need // len(speech_16k) + 1)[:need]
    if rate != 16000:
        mono = soxr.resample(mono, 16000, rate)
    n = int(round(seconds * rate))
    mono = np.pad(mono, (0, max(0, n - len(mono))))[:n]
    data = np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono
    sf.write(path, data, rate, subtype="PCM_16")
    return path


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("rate,channels", [(8000, 1), (16000, 1), (44100, 1), (48000, 2)])
@pytest.mark.parametrize("seconds", [0.3, 1.0, 4.01, 61.0])
def test_frames_cover_the_audio_at_any_rate_and_length(speech_16k, tmp_path, seconds, rate, channels):
    path = write_speech(tmp_path / "speech.wav", speech_16k, seconds, rate, channels)
    audio = read_speech(path)
    assert n_frames_for(len(audio), 16000) == math.ceil(round(seconds * 25, 6))


@pytest.mark.parametrize("seconds,rate,channels", [(61.0, 44100, 1), (0.3, 48000, 2), (4.01, 8000, 1)])
def test_cli_writes_a_template_with_one_frame_per_25th_of_a_second(checkpoint, speech_16k, tmp_path,
                                                                    seconds, rate, channels):
    wav = write_speech(tmp_path / "speech.wav", speech_16k, seconds, rate, channels)
    out = tmp_path / "out" / "motion.pkl"
    assert run_cli("--checkpoint", checkpoint, "--audio", wav, "--out", out, *FAST) == 0
    expected = math.ceil(round(seconds * 25, 6))
    with open(out, "rb") as f:
        template = pickle.load(f)
    assert template["n_frames"] == len(template["motion"]) == expected and template["output_fps"] == 25
    vector = np.load(out.with_suffix(".npy"))
    assert vector.shape == (expected, VECTOR_DIM) and vector.dtype == np.float32
    assert np.isfinite(vector).all()
    np.testing.assert_allclose(load_template(out).vector, vector, atol=1e-3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["motion.npy", "motion.pkl"]


def test_same_seed_same_motion_other_seed_other_motion(checkpoint, speech_16k, tmp_path):
    wav = write_speech(tmp_path / "speech.wav", speech_16k, 3.0, 16000)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / f"{name}.pkl"
        assert run_cli("--checkpoint", checkpoint, "--audio", wav, "--out", out, "--seed", seed,
                       "--cfg-scale", "2.0", *FAST) == 0
        runs[name] = np.load(out.with_suffix(".npy"))
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert np.abs(runs["a"] - runs["c"]).max() > 1e-3


def test_pose_smoothing_smooths_only_the_pose(checkpoint, speech_16k, tmp_path):
    wav = write_speech(tmp_path / "speech.wav", speech_16k, 3.0, 16000)
    raw, smooth = tmp_path / "raw.pkl", tmp_path / "smooth.pkl"
    assert run_cli("--checkpoint", checkpoint, "--audio", wav, "--out", raw, *FAST) == 0
    assert run_cli("--checkpoint", checkpoint, "--audio", wav, "--out", smooth, "--smooth-pose", "3",
                   *FAST) == 0
    a, b = np.load(raw.with_suffix(".npy")), np.load(smooth.with_suffix(".npy"))
    np.testing.assert_array_equal(a[:, :63], b[:, :63])
    jitter = lambda v: np.abs(np.diff(v[:, 63:], axis=0)).mean()
    assert jitter(b) < 0.5 * jitter(a)


def test_preview_has_the_audio_duration_at_25_fps(checkpoint, speech_16k, tmp_path):
    seconds = 2.37
    wav = write_speech(tmp_path / "speech.wav", speech_16k, seconds, 44100, channels=2)
    out, preview = tmp_path / "motion.pkl", tmp_path / "preview.mp4"
    assert run_cli("--checkpoint", checkpoint, "--audio", wav, "--out", out, "--preview", preview,
                   *FAST) == 0
    n_frames = math.ceil(seconds * 25)
    with av.open(str(preview)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert video.average_rate == 25
        frames = list(container.decode(video=0))
        time_base = video.time_base
    assert len(frames) == n_frames
    video_seconds = float((frames[-1].pts - frames[0].pts) * time_base) + 1 / 25
    assert abs(video_seconds - seconds) <= 1 / 25
    with av.open(str(preview)) as container:
        decoded = sum(f.samples for f in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    assert abs(decoded / rate - seconds) <= 1 / 25 + 1024 / rate  # AAC pads its last frame
    first = frames[0].to_ndarray(format="rgb24")
    assert first.shape[2] == 3 and first.std() > 5  # something was drawn
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left


def make_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def make_garbage(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    return path


def make_silent(path: Path) -> Path:
    sf.write(path, np.zeros(16000, np.float32), 16000)
    return path


def make_no_samples(path: Path) -> Path:
    sf.write(path, np.zeros(0, np.float32), 16000)
    return path


@pytest.mark.parametrize("maker,message", [
    (make_empty, "cannot read audio"),
    (make_garbage, "cannot read audio"),
    (make_silent, "silent"),
    (make_no_samples, "no samples"),
    (lambda p: p.with_name("missing.wav"), "not found"),
])
def test_bad_audio_is_refused_with_exit_2_and_no_output(checkpoint, tmp_path, capsys, maker, message):
    wav = maker(tmp_path / "speech.wav")
    out = tmp_path / "out" / "motion.pkl"
    assert run_cli("--checkpoint", checkpoint, "--audio", wav, "--out", out, *FAST) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_checkpoints_that_do_not_match_are_refused(media, checkpoint, speech_16k, tmp_path, capsys):
    wav = write_speech(tmp_path / "speech.wav", speech_16k, 1.0, 16000)
    out = tmp_path / "motion.pkl"
    state = torch.load(checkpoint, weights_only=False)

    not_a_checkpoint = tmp_path / "garbage.pt"
    not_a_checkpoint.write_bytes(b"\x00" * 100)
    wider = {**state, "model_config": {**state["model_config"], "width": 64}}
    torch.save(wider, tmp_path / "wider.pt")
    missing = {k: v for k, v in state.items() if k != "ema"}
    torch.save(missing, tmp_path / "missing.pt")
    other_audio = write_checkpoint(tmp_path / "audio16.pt",
                                   random_model(ModelConfig(**{**TINY.to_dict(), "audio_dim": 16}), 0),
                                   template_stats(media, 16))
    unrecorded = write_checkpoint(tmp_path / "unrecorded.pt", random_model(TINY, 0),
                                  template_stats(media, ENCODER_DIM, encoder=None))
    cases = [(not_a_checkpoint, "cannot load checkpoint"), (tmp_path / "wider.pt", "do not match"),
             (tmp_path / "missing.pt", "lacks ['ema']"), (other_audio, "16-wide"),
             (unrecorded, "--audio-encoder"), (tmp_path / "absent.pt", "not found")]
    for ckpt, message in cases:
        assert run_cli("--checkpoint", ckpt, "--audio", wav, "--out", out, *FAST) == EXIT_BAD_INPUT
        assert message in capsys.readouterr().err, ckpt
        assert not out.exists()
    # the encoder can always be named on the command line
    assert run_cli("--checkpoint", unrecorded, "--audio", wav, "--out", out,
                   "--audio-encoder", "random:small", *FAST) == 0
    assert out.exists()
    assert run_cli("--checkpoint", checkpoint, "--audio", wav, "--out", tmp_path / "m.pkl",
                   "--sampler", "ddpm", "--steps", "3") == EXIT_BAD_INPUT  # ddpm runs all steps
    assert "ddim" in capsys.readouterr().err


def test_module_entry_point_exits_2_on_bad_input(checkpoint, tmp_path):
    silent = make_silent(tmp_path / "silent.wav")
    proc = subprocess.run([sys.executable, "-m", "training.sample", "--checkpoint", str(checkpoint),
                           "--audio", str(silent), "--out", str(tmp_path / "m.pkl")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "silent" in proc.stderr and "Traceback" not in proc.stderr


def test_read_speech_keeps_quiet_real_speech(speech_16k, tmp_path):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, 0.05 * speech_16k / np.abs(speech_16k).max(), 16000)  # about -40 dBFS RMS
    assert len(read_speech(quiet)) == len(speech_16k)
    with pytest.raises(BadInputError, match="silent"):
        read_speech(quiet, min_rms=0.5)
