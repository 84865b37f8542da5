"""The audio encoder's input is what the checkpoint's feature extractor makes of each window.

Small random checkpoints are written to tmp folders the way the hub publishes them (config.json,
weights, preprocessor_config.json); the array the model's forward receives is caught with a hook
and compared with ``Wav2Vec2FeatureExtractor.from_pretrained(folder)(window, sampling_rate=16000)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from configs import load_config, to_dict
from models.audio_encoder import AudioEncoder, small_config
from models.audio_inputs import PREPROCESSOR_FILE, settings_from_id
from models.weights import weight_id
from pipeline.stages.audio_features import AudioFeatureStage
from shards.format import SAMPLE_RATE, SAMPLES_PER_FRAME

EDGE = 40  # reflected samples at each end of the clip (models.audio_encoder.EDGE_PAD)


def published_settings(do_normalize: bool, return_attention_mask: bool = False, **changes) -> dict:
    """A preprocessor_config.json as facebook/wav2vec2-base-960h and chinese-hubert-base publish it."""
    return {"do_normalize": do_normalize, "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "feature_size": 1, "padding_side": "right", "padding_value": 0.0,
            "return_attention_mask": return_attention_mask, "sampling_rate": 16000, **changes}


def write_checkpoint(folder: Path, kind: str, settings: dict | None, front_norm: str = "group") -> Path:
    """A tiny random wav2vec2 or HuBERT (the official front-end geometry) saved as a checkpoint folder;
    ``front_norm``: the first conv layer's norm, ``group`` (base models) or ``layer`` (large-lv60)."""
    config = small_config()
    config.feat_extract_norm = front_norm
    if kind == "hubert":
        config = HubertConfig(**{k: v for k, v in config.to_dict().items()
                                 if k in HubertConfig().to_dict() and k not in ("model_type", "architectures")})
    torch.manual_seed(0)
    model = (HubertModel if kind == "hubert" else Wav2Vec2Model)(config).eval()
    model.save_pretrained(folder)
    if settings is not None:
        (folder / PREPROCESSOR_FILE).write_text(json.dumps(settings, indent=2))
    return folder


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """A loud-then-quiet tone with noise and an offset, so normalisation visibly changes it."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.where(t < seconds / 2, 0.6, 0.05)
    return (envelope * np.sin(2 * np.pi * 210 * t) + 0.01 * rng.normal(size=t.size) + 0.02).astype(np.float32)


def model_inputs(encoder: AudioEncoder, audio: np.ndarray, n_frames: int) -> tuple[np.ndarray, list]:
    """(features, [(input_values, attention_mask or None) per forward call])."""
    seen: list = []

    def grab(module, args, kwargs):
        values = args[0] if args else kwargs["input_values"]
        mask = kwargs.get("attention_mask")
        seen.append((values[0].numpy().copy(), None if mask is None else mask[0].numpy().copy()))

    hook = encoder.model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        feats = encoder.encode(audio, n_frames)
    finally:
        hook.remove()
    return feats, seen


def reflect_padded(audio: np.ndarray) -> np.ndarray:
    """The clip with two 20-sample reflections at each end (JoyVASA's pad_audio)."""
    return np.pad(np.pad(audio, 20, mode="reflect"), 20, mode="reflect")


CASES = [("wav2vec2", True, False),   # facebook/wav2vec2-base-960h's settings
         ("hubert", True, False),     # TencentGameMate/chinese-hubert-base's settings
         ("hubert", False, False),    # a checkpoint that wants the raw waveform
         ("wav2vec2", True, True)]    # one whose processor returns an attention mask


@pytest.mark.parametrize("kind,do_normalize,return_attention_mask", CASES)
def test_one_window_is_fed_exactly_as_the_processor_would(tmp_path, kind, do_normalize, return_attention_mask):
    folder = write_checkpoint(tmp_path / f"tiny-{kind}", kind,
                              published_settings(do_normalize, return_attention_mask))
    encoder = AudioEncoder(folder)
    audio = speech(2.0)
    n_frames = len(audio) // SAMPLES_PER_FRAME
    feats, seen = model_inputs(encoder, audio, n_frames)
    processor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    expected = processor(reflect_padded(audio), sampling_rate=16000)

    assert len(seen) == 1 and feats.shape == (n_frames, 64)
    values, mask = seen[0]
    np.testing.assert_array_equal(values, expected["input_values"][0])
    if return_attention_mask:
        np.testing.assert_array_equal(mask, expected["attention_mask"][0])
    else:
        assert mask is None and "attention_mask" not in expected
    if do_normalize:
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-3
    else:
        np.testing.assert_array_equal(values, reflect_padded(audio))
    assert encoder.input_settings == {"do_normalize": do_normalize, "feature_size": 1, "padding_value": 0.0,
                                      "return_attention_mask": return_attention_mask, "sampling_rate": 16000,
                                      "normalized_over": "window"}


@pytest.mark.parametrize("do_normalize", [True, False])
def test_each_window_is_its_own_processor_input(tmp_path, do_normalize):
    """Long audio: every window (with its context and the clip's edge reflections) is one array
    given to the processor, so with do_normalize each window is scaled on its own."""
    folder = write_checkpoint(tmp_path / "tiny", "wav2vec2", published_settings(do_normalize))
    encoder = AudioEncoder(folder, window_s=1.0, context_s=0.4)  # 25-frame windows, 10 frames context
    audio = speech(3.0, seed=1)
    n_frames = 75
    _, seen = model_inputs(encoder, audio, n_frames)
    padded = reflect_padded(audio)  # sample i of the clip is padded[i + 40]
    processor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    windows = [(0, 35), (15, 60), (40, 75)]  # [first - context, last + context) in frames
    assert len(seen) == len(windows)
    for (begin, end), (values, _) in zip(windows, seen):
        raw = padded[begin * SAMPLES_PER_FRAME: end * SAMPLES_PER_FRAME + 2 * EDGE]
        np.testing.assert_array_equal(values, processor(raw, sampling_rate=16000)["input_values"][0])
    if do_normalize:  # the loud first half and the quiet second half each come out at unit scale
        assert all(abs(values.std() - 1) < 1e-3 for values, _ in seen)


def relative_change(tmp_path: Path, front_norm: str) -> float:
    """Mean |features(do_normalize) - features(raw)| over mean |features(raw)|, same weights."""
    audio = speech(1.5)
    features = []
    for flag in (True, False):
        folder = write_checkpoint(tmp_path / f"{front_norm}-{flag}", "wav2vec2", published_settings(flag), front_norm)
        features.append(AudioEncoder(folder).encode(audio, 37))
    return float(np.abs(features[0] - features[1]).mean() / np.abs(features[1]).mean())


def test_the_setting_matters_where_the_front_end_keeps_the_offset(tmp_path):
    """A layer-norm front end (wav2vec2-large-lv60 style) keeps the input's offset, so do_normalize
    changes its features; the group norm of base models (both registry encoders) removes offset and
    scale of the first conv layer per channel, so there the flag changes features only through the
    norm's epsilon."""
    assert relative_change(tmp_path, "layer") > 0.05
    assert relative_change(tmp_path, "group") < 0.01


def test_missing_preprocessor_config_is_refused_unless_settings_are_given(tmp_path):
    folder = write_checkpoint(tmp_path / "no-preprocessor", "wav2vec2", None)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        AudioEncoder(folder)
    with pytest.raises(OSError):  # transformers refuses the folder as well
        Wav2Vec2FeatureExtractor.from_pretrained(folder)
    # Settings given explicitly (e.g. the ones recorded with training features) replace the file.
    encoder = AudioEncoder(folder, preprocessor={"do_normalize": False})
    audio = speech(1.0)
    _, seen = model_inputs(encoder, audio, 25)
    np.testing.assert_array_equal(seen[0][0], reflect_padded(audio))


@pytest.mark.parametrize("change,message", [({"sampling_rate": 8000}, "8000 Hz"),
                                            ({"feature_size": 80}, "feature_size 80"),
                                            ({"feature_extractor_type": "WhisperFeatureExtractor"},
                                             "WhisperFeatureExtractor")])
def test_settings_the_pipeline_cannot_meet_are_refused(tmp_path, change, message):
    folder = write_checkpoint(tmp_path / "odd", "wav2vec2", published_settings(True, **change))
    with pytest.raises(ValueError, match=message):
        AudioEncoder(folder)


def test_the_manifests_record_the_input_settings(tmp_path):
    folder = write_checkpoint(tmp_path / "tiny-hubert", "hubert", published_settings(False))
    cfg = to_dict(load_config("pipeline", [f"models.audio_encoder.weights={folder}", "models.device=cpu"]))
    description = AudioFeatureStage(cfg).describe()
    assert description["model_id"] == ("tiny-hubert;do_normalize=false;feature_size=1;normalized_over=window;"
                                       "padding_value=0.0;return_attention_mask=false;sampling_rate=16000")
    assert description["weight_id"] == weight_id(folder)  # hashes preprocessor_config.json too


def test_recorded_settings_read_back_into_the_same_inputs(tmp_path):
    """training.sample can rebuild the training features' inputs from the manifest's model id."""
    folder = write_checkpoint(tmp_path / "tiny", "wav2vec2", published_settings(False, True))
    trained = AudioEncoder(folder)
    recorded = settings_from_id(f"{trained.model_id};{trained.input_id}")
    assert recorded == trained.input_settings
    Path(folder / PREPROCESSOR_FILE).unlink()  # the folder lost its file: the record still decides
    again = AudioEncoder(folder, preprocessor=recorded)
    audio = speech(1.0)
    (given, _), = model_inputs(again, audio, 25)[1]
    (original, _), = model_inputs(trained, audio, 25)[1]
    np.testing.assert_array_equal(given, original)
    assert settings_from_id("chinese-hubert-base") is None  # made before settings were recorded
