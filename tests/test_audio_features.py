"""Audio features: exactly T rows for any audio, windowing, loading from folders and from files, and
the model's input exactly as the checkpoint's feature extractor (preprocessor_config.json) makes it."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from models.audio_encoder import AudioEncoder, load_audio, small_config, to_mono_16k
from shards.format import FPS, SAMPLE_RATE

pytestmark = pytest.mark.filterwarnings("ignore:AudioEncoder uses RANDOM weights")


@pytest.fixture(scope="module")
def encoder() -> AudioEncoder:
    return AudioEncoder("random", random_config="small")


def speech_like(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """(N,) or (N, channels): a modulated tone plus noise, different in each channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    columns = [0.3 * np.sin(2 * np.pi * (180 + 40 * c) * t) * np.sin(2 * np.pi * 3 * t) + 0.02 * rng.normal(size=t.size)
               for c in range(channels)]
    samples = np.stack(columns, axis=1).astype(np.float32)
    return samples[:, 0] if channels == 1 else samples


CASES = [(rate, channels, seconds) for rate in (8000, 16000, 44100, 48000) for channels in (1, 2)
         for seconds in (0.5, 3.3)] + [(8000, 1, 61.0), (44100, 2, 61.0), (48000, 1, 61.0)]


@pytest.mark.parametrize("rate,channels,seconds", CASES)
def test_exactly_one_row_per_frame(encoder, rate, channels, seconds):
    audio = to_mono_16k(speech_like(seconds, rate, channels), rate)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - seconds * SAMPLE_RATE) <= 1
    n_frames = int(seconds * FPS)
    feats = encoder.encode(audio, n_frames)
    assert feats.shape == (n_frames, encoder.dim) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std() > 0


def test_frame_count_decides_the_rows_not_the_audio(encoder):
    audio = to_mono_16k(speech_like(3.3, 16000, 1), 16000)  # 82.5 frames of audio
    for n_frames in (0, 1, 50, 82, 83, 100, 120):
        assert encoder.encode(audio, n_frames).shape == (n_frames, 64)
    # Frames past the audio's end see silence (zero padding); frames before it are unaffected by it.
    longer = encoder.encode(audio, 100)
    np.testing.assert_allclose(encoder.encode(np.concatenate([audio, np.zeros(20000, np.float32)]), 100), longer,
                               atol=1e-5)
    with pytest.raises(ValueError, match="mono"):
        encoder.encode(np.zeros((100, 2), np.float32), 3)


def normalized(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, as Wav2Vec2FeatureExtractor's do_normalize defines it."""
    return ((samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)).astype(np.float32)


def test_alignment_is_pairs_of_50hz_tokens_after_reflection_padding(encoder):
    """One window by hand: 40 reflected samples each end -> 2T tokens -> linear interpolation to T."""
    audio = to_mono_16k(speech_like(2.0, 16000, 1), 16000)
    n_frames = 50
    padded = np.pad(np.pad(audio, 20, mode="reflect"), 20, mode="reflect")
    assert encoder.input_settings["do_normalize"]  # random weights: the official checkpoints' settings
    with torch.inference_mode():
        hidden = encoder.model(torch.from_numpy(normalized(padded))[None]).last_hidden_state  # (1, 2T, D)
    assert hidden.shape[1] == 2 * n_frames
    expected = F.interpolate(hidden.transpose(1, 2), size=n_frames, mode="linear", align_corners=False)
    np.testing.assert_allclose(encoder.encode(audio, n_frames), expected[0].T.numpy(), atol=1e-5)


def test_windowed_equals_one_pass_within_tolerance(encoder):
    audio = to_mono_16k(speech_like(60.0, 16000, 1, seed=3), 16000)
    n_frames = 1500
    one_pass = AudioEncoder("random", random_config="small", window_s=1000, context_s=0).encode(audio, n_frames)
    windowed = encoder.encode(audio, n_frames)  # 20 s windows, 2 s context each side
    scale = np.abs(one_pass).mean()
    assert np.abs(windowed - one_pass).max() < 0.08 * scale
    assert np.abs(windowed - one_pass).mean() < 0.01 * scale
    # Without context the window edges are visibly off: the context is doing the work.
    no_context = AudioEncoder("random", random_config="small", window_s=20, context_s=0).encode(audio, n_frames)
    assert np.abs(no_context - one_pass).max() > 4 * np.abs(windowed - one_pass).max()


def test_ten_minutes_run_in_bounded_windows(encoder):
    seen: list[int] = []
    hook = encoder.model.feature_extractor.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-1]))
    try:
        audio = np.random.default_rng(1).normal(0, 0.1, 600 * SAMPLE_RATE).astype(np.float32)
        feats = encoder.encode(audio, 600 * FPS)
    finally:
        hook.remove()
    assert feats.shape == (15000, 64) and np.isfinite(feats).all()
    assert len(seen) == 30 and max(seen) <= (20 + 2 * 2) * SAMPLE_RATE + 80


def test_random_mode_is_the_official_base_architecture():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        base = AudioEncoder("random")
    assert isinstance(base.model, Wav2Vec2Model) and base.dim == 768
    assert len(base.model.encoder.layers) == 12
    assert sum(p.numel() for p in base.model.parameters()) == 94_371_712  # wav2vec2-base without a head
    assert base.encode(np.zeros(8000, np.float32), 12).shape == (12, 768)


def test_folder_round_trip_wav2vec2(encoder, tmp_path):
    encoder.model.save_pretrained(tmp_path / "tiny-wav2vec2")
    Wav2Vec2FeatureExtractor().save_pretrained(tmp_path / "tiny-wav2vec2")  # the defaults, as random uses
    loaded = AudioEncoder(tmp_path / "tiny-wav2vec2")
    assert loaded.model_id == "tiny-wav2vec2" and not loaded.random_weights
    audio = to_mono_16k(speech_like(2.5, 16000, 1), 16000)
    np.testing.assert_array_equal(loaded.encode(audio, 62), encoder.encode(audio, 62))


def test_folder_round_trip_hubert(tmp_path):
    config = HubertConfig(**{k: v for k, v in small_config().to_dict().items()
                             if k in HubertConfig().to_dict() and k not in ("model_type", "architectures")})
    torch.manual_seed(0)
    model = HubertModel(config).eval()
    model.save_pretrained(tmp_path / "tiny-hubert")
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path / "tiny-hubert")
    loaded = AudioEncoder(tmp_path / "tiny-hubert")
    assert isinstance(loaded.model, HubertModel) and loaded.dim == 64
    audio = to_mono_16k(speech_like(1.0, 16000, 1), 16000)
    padded = np.pad(np.pad(audio, 20, mode="reflect"), 20, mode="reflect")
    with torch.inference_mode():  # do_normalize false: the raw waveform goes in
        hidden = model(torch.from_numpy(padded)[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(loaded.encode(audio, 25), hidden.reshape(25, 2, 64).mean(1), atol=1e-6)


def test_bad_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        AudioEncoder(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="bert"):
        AudioEncoder(tmp_path)


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))


@pytest.mark.parametrize("suffix", ["wav", "flac", "mp3", "m4a"])
def test_load_audio_formats(tmp_path, suffix):
    rate, seconds = 44100, 1.0
    t = np.arange(int(rate * seconds)) / rate
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1)
    source = tmp_path / "tone.wav"
    soundfile.write(source, stereo, rate, subtype="PCM_16")
    path = tmp_path / f"tone.{suffix}"
    if suffix == "flac":
        soundfile.write(path, stereo, rate)
    elif suffix in ("mp3", "m4a"):
        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg not installed")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), str(path)], check=True)
    else:
        path = source
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - SAMPLE_RATE * seconds) < 0.06 * SAMPLE_RATE  # mp3/aac add priming samples
    assert dominant_hz(audio) == pytest.approx(440, abs=3)
    assert 0.3 < np.abs(audio).max() < 0.6


def test_load_audio_real_media(media, encoder):
    speech = load_audio(media / "joyvasa_006.wav")
    assert speech.dtype == np.float32 and abs(len(speech) / SAMPLE_RATE - 10.6) < 0.1
    from_video = load_audio(media / "lp_d20.mp4")  # AAC stereo 44.1 kHz in an mp4
    assert abs(len(from_video) / SAMPLE_RATE - 7.0) < 0.1 and np.abs(from_video).max() > 0.01
    with pytest.raises(ValueError, match="no audio track"):
        load_audio(media / "carphone.mp4")
    n_frames = len(speech) // 640
    feats = encoder.encode(speech, n_frames)
    assert feats.shape == (n_frames, 64) and np.isfinite(feats).all()
