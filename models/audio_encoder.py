"""Speech features from a wav2vec2 or HuBERT encoder, one row per 25 fps video frame.

Alignment (as JoyVASA's public code computes its training features):

1. The clip's audio is cut or zero-padded to exactly ``T * 640`` samples (T frames at 25 fps,
   16 kHz), then 40 samples are added at each end by reflection (JoyVASA's ``pad_audio``: two
   20-sample reflections). The convolutional front end (receptive field 400, hop 320) then yields
   exactly 2T tokens at 50 Hz, token ``k`` centred on sample ``320 k + 160``: every video frame
   owns two tokens, centred at its first and third quarter.
2. The transformer runs on those 2T tokens.
3. The 2T hidden states become T rows by linear interpolation (``align_corners=False``), which at
   an exact factor of two is the mean of each frame's two tokens; that is what is computed here.

The public code interpolates the convolutional features to 2T tokens before the transformer; with
the padding above that interpolation is the identity, so it is left out.

Long audio runs in windows of ``window_s`` seconds (20), each seeing ``context_s`` (2) of real
audio on both sides that is dropped from the output, so memory is set by the window, not the clip.
The context exceeds half the convolutional position embedding (128 tokens = 2.56 s), so every kept
row sees real audio through it. Attention and the front end's group norm see only the window, so
windowed rows differ slightly from one pass over the whole clip (JoyVASA itself encodes 4 s
training windows).

Input scaling follows the checkpoint's ``preprocessor_config.json`` (``models.audio_inputs``):
every array the model is given (one window with its context and edge padding) first goes through
transformers' ``Wav2Vec2FeatureExtractor`` with the checkpoint's settings, so with
``do_normalize`` each window is scaled to zero mean and unit variance on its own, exactly as the
extractor scales the array it is handed. Per window rather than over the whole clip, because:
the model then sees what its processor would have given it for that stretch of audio (wav2vec2's
pretraining code, where it normalises, does so per utterance of seconds to ~35 s); a frame's
features depend only on its window, not on audio minutes away or on the clip's length, so the
short training clips (pipeline) and a long speech file at inference (``training.sample``, through
this same class) are scaled alike; and nothing needs the whole clip in memory. The cost: a window
of near silence is scaled up, as the extractor would scale it. (JoyVASA's public code feeds the
raw waveform.)
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch
from transformers import AutoConfig, AutoModel, HubertModel, PretrainedConfig, Wav2Vec2Config, Wav2Vec2Model

from models.audio_inputs import feature_extractor_from, load_feature_extractor, settings_id, settings_of
from models.weights import warn_random
from shards.format import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

SUPPORTED_TYPES = ("wav2vec2", "hubert")
EDGE_PAD = 40        # samples of reflection at each end of the clip (two 20-sample reflections)
TOKENS_PER_FRAME = 2  # 50 Hz encoder tokens per 25 fps frame


def small_config() -> Wav2Vec2Config:
    """A tiny wav2vec2 (hidden 64, 2 layers) with the official front-end geometry, for tests."""
    return Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                          conv_dim=(32,) * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
                          vocab_size=32)


def random_encoder_config(choice: str | PretrainedConfig | None) -> PretrainedConfig:
    """``None``/``"base"``: the official wav2vec2-base architecture; ``"small"``: ``small_config``."""
    if isinstance(choice, PretrainedConfig):
        return choice
    if choice in (None, "base"):
        return Wav2Vec2Config()  # its defaults are wav2vec2-base: 12 layers, width 768, conv 512 x 7
    if choice == "small":
        return small_config()
    raise ValueError(f"random_config must be None, 'base', 'small' or a config, got {choice!r}")


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(N,) or (N, channels) samples at any rate -> float32 mono 16 kHz (channel mean, soxr HQ)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    elif samples.ndim != 1:
        raise ValueError(f"audio must be (N,) or (N, channels), got shape {samples.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    if sample_rate != SAMPLE_RATE and len(samples):
        samples = soxr.resample(samples, sample_rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def load_audio(path: str | Path) -> np.ndarray:
    """Any audio file or video's first audio track (wav, flac, mp3, m4a, mp4...) -> float32 mono 16 kHz.

    Decoded with PyAV and resampled with soxr chunk by chunk, so only the 16 kHz result is held.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    parts: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio track")
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")  # keeps rate and layout, converts sample format
        stream_resampler = None
        for frame in container.decode(stream):
            for converted in to_float.resample(frame):
                mono = converted.to_ndarray().mean(axis=0).astype(np.float32)
                if stream_resampler is None:
                    stream_resampler = soxr.ResampleStream(converted.sample_rate, SAMPLE_RATE, 1,
                                                           dtype="float32", quality="HQ")
                parts.append(stream_resampler.resample_chunk(mono))
        if stream_resampler is not None:
            parts.append(stream_resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def fit_to_frames(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Cut or zero-pad 16 kHz audio to exactly ``n_frames * 640`` samples."""
    n_samples = n_frames * SAMPLES_PER_FRAME
    if len(audio) >= n_samples:
        return audio[:n_samples]
    return np.concatenate([audio, np.zeros(n_samples - len(audio), audio.dtype)])


def _reflect_twice(samples: np.ndarray, side: str) -> np.ndarray:
    """The ``EDGE_PAD`` samples two 20-sample reflections add before (``left``) or after the audio."""
    half = EDGE_PAD // 2
    piece = samples[: EDGE_PAD + 1] if side == "left" else samples[-(EDGE_PAD + 1):]
    padded = np.pad(np.pad(piece, half, mode="reflect"), half, mode="reflect")
    return padded[:EDGE_PAD] if side == "left" else padded[-EDGE_PAD:]


class AudioEncoder:
    """A wav2vec2/HuBERT encoder that turns a clip's audio into (T, D) frame features.

    ``weights``: a checkpoint folder transformers can load (``config.json`` + weights +
    ``preprocessor_config.json``; any wav2vec2 or HuBERT, base or large, CTC heads ignored), or
    ``"random"`` for random weights of ``random_config`` (default: the wav2vec2-base architecture;
    ``"small"`` for tests). ``preprocessor``: feature-extractor settings that replace the folder's
    (e.g. the ones recorded with training features); random weights default to the extractor's
    defaults, which are the official checkpoints' settings.
    """

    def __init__(self, weights: str | Path = "random", device: str | torch.device = "cpu",
                 random_config: str | PretrainedConfig | None = None, seed: int = 0,
                 window_s: float = 20.0, context_s: float = 2.0,
                 preprocessor: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None):
        self.device = torch.device(device)
        self.random_weights = str(weights) == "random"
        if self.random_weights:
            config = random_encoder_config(random_config)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModel.from_config(config)
            self.model_id = f"random:{config.model_type}-h{config.hidden_size}-l{config.num_hidden_layers}"
            warn_random(f"audio encoder {self.model_id}")
            warnings.warn(f"AudioEncoder uses RANDOM weights ({self.model_id}): its features are "
                          "meaningless; use them for tests and smoke runs only", stacklevel=2)
            extractor = feature_extractor_from(preprocessor)
        else:
            folder = Path(weights)
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"audio encoder folder {folder} has no config.json "
                                        "(expected a transformers wav2vec2/HuBERT checkpoint folder)")
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            if config.model_type not in SUPPORTED_TYPES:
                raise ValueError(f"{folder} holds a {config.model_type!r} model; supported: {SUPPORTED_TYPES}")
            extractor = (load_feature_extractor(folder) if preprocessor is None
                         else feature_extractor_from(preprocessor))
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            self.model_id = folder.name
        if not isinstance(model, (Wav2Vec2Model, HubertModel)):
            raise TypeError(f"expected a wav2vec2/HuBERT base model, got {type(model).__name__}")
        self.model = model.to(self.device, dtype=dtype).eval()
        self.dtype = next(self.model.parameters()).dtype
        self.dim = int(config.hidden_size)
        self.window_frames = max(1, round(window_s * FPS))
        self.context_frames = max(0, round(context_s * FPS))
        self.feature_extractor = extractor
        # What decides the model's input, recorded beside the model id in manifests and shards.
        self.input_settings = {**settings_of(extractor), "normalized_over": "window"}
        self.input_id = settings_id(self.input_settings)

    @torch.inference_mode()
    def _hidden_states(self, samples: np.ndarray) -> np.ndarray:
        """(n_tokens, D) float32 last hidden states for one padded window, fed through the
        checkpoint's feature extractor exactly as its processor would feed it."""
        inputs = self.feature_extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        x = inputs["input_values"].to(self.device, self.dtype)
        mask = inputs.get("attention_mask")
        mask = None if mask is None else mask.to(self.device)
        return self.model(x, attention_mask=mask).last_hidden_state[0].float().cpu().numpy()

    def iter_encode(self, audio: np.ndarray, n_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_frame, rows)`` window by window; the rows of all windows cover [0, n_frames)."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (N,) float32 at 16 kHz, got shape {audio.shape}")
        if n_frames < 0:
            raise ValueError(f"n_frames must be >= 0, got {n_frames}")
        if n_frames == 0:
            return
        audio = fit_to_frames(audio, n_frames)
        head, tail = _reflect_twice(audio, "left"), _reflect_twice(audio, "right")
        for first in range(0, n_frames, self.window_frames):
            last = min(first + self.window_frames, n_frames)
            begin, end = max(0, first - self.context_frames), min(n_frames, last + self.context_frames)
            # Samples [640 begin - 40, 640 end + 40): real audio where it exists, reflection at the ends.
            lo, hi = begin * SAMPLES_PER_FRAME - EDGE_PAD, end * SAMPLES_PER_FRAME + EDGE_PAD
            pieces = [head] if lo < 0 else []
            pieces.append(audio[max(lo, 0):min(hi, len(audio))])
            if hi > len(audio):
                pieces.append(tail)
            tokens = self._hidden_states(np.concatenate(pieces))
            expected = TOKENS_PER_FRAME * (end - begin)
            if len(tokens) != expected:
                raise RuntimeError(f"encoder gave {len(tokens)} tokens for {end - begin} frames, expected "
                                   f"{expected}: its front end is not the wav2vec2 one (hop 320, field 400)")
            own = tokens[TOKENS_PER_FRAME * (first - begin): TOKENS_PER_FRAME * (last - begin)]
            yield first, own.reshape(last - first, TOKENS_PER_FRAME, self.dim).mean(axis=1)

    def encode(self, audio: np.ndarray, n_frames: int) -> np.ndarray:
        """(n_frames, D) float32 features for mono 16 kHz ``audio`` (any length: cut or padded)."""
        out = np.zeros((n_frames, self.dim), np.float32)
        for first, rows in self.iter_encode(audio, n_frames):
            out[first: first + len(rows)] = rows
        return out

