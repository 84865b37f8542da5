"""What a wav2vec2/HuBERT checkpoint expects as input: its feature extractor, as transformers loads it.

A checkpoint folder's ``preprocessor_config.json`` says how raw audio becomes the model's
``input_values``: ``do_normalize`` (zero mean, unit variance over each array given to the
extractor), ``sampling_rate``, ``feature_size`` (1: a raw waveform), ``padding_value`` (only for
padding a batch to one length) and ``return_attention_mask`` (whether the model is called with
one). The encoder runs transformers' own ``Wav2Vec2FeatureExtractor`` on every array it gives the
model, so its inputs are exactly what ``Wav2Vec2FeatureExtractor.from_pretrained(folder)(array,
sampling_rate=16000)`` returns.

Both encoders in the registry ship the file with the same settings: ``do_normalize`` true,
``return_attention_mask`` false, ``padding_value`` 0, 16 kHz, ``feature_size`` 1 (the published
files of facebook/wav2vec2-base-960h and TencentGameMate/chinese-hubert-base). Those are also the
extractor's defaults, which random weights use.

A folder without the file is refused, as ``Wav2Vec2FeatureExtractor.from_pretrained`` refuses it:
whether the checkpoint wants normalised input cannot be guessed, and a wrong guess would silently
change every feature. ``python -m models.weights fetch`` downloads the file with the weights.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import Wav2Vec2FeatureExtractor

from shards.format import SAMPLE_RATE

PREPROCESSOR_FILE = "preprocessor_config.json"
SETTINGS = ("do_normalize", "feature_size", "padding_value", "return_attention_mask", "sampling_rate")
EXTRACTOR_TYPE = "Wav2Vec2FeatureExtractor"


def load_feature_extractor(folder: str | Path) -> Wav2Vec2FeatureExtractor:
    """The feature extractor of a checkpoint folder; FileNotFoundError when it has none."""
    folder = Path(folder)
    path = folder / PREPROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"audio encoder folder {folder} has no {PREPROCESSOR_FILE}, so whether the checkpoint expects "
            f"normalised input is unknown; copy the file from the checkpoint's repository (`python -m "
            f"models.weights fetch` downloads it) or write the checkpoint's settings with "
            f"Wav2Vec2FeatureExtractor(do_normalize=...).save_pretrained(folder)")
    declared = json.loads(path.read_text()).get("feature_extractor_type", EXTRACTOR_TYPE)
    if declared != EXTRACTOR_TYPE:
        raise ValueError(f"{path} describes a {declared}; a wav2vec2/HuBERT checkpoint uses {EXTRACTOR_TYPE}")
    return checked(Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True), str(path))


def feature_extractor_from(settings: Mapping[str, Any] | None) -> Wav2Vec2FeatureExtractor:
    """An extractor with these settings (e.g. recorded ones); ``None``: the defaults (see above)."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTINGS) - {"normalized_over"})
    if unknown:
        raise ValueError(f"unknown feature-extractor settings {unknown}; known: {list(SETTINGS)}")
    settings.pop("normalized_over", None)
    return checked(Wav2Vec2FeatureExtractor(**settings), "the given feature-extractor settings")


def checked(extractor: Wav2Vec2FeatureExtractor, where: str) -> Wav2Vec2FeatureExtractor:
    """The extractor, if it takes what the pipeline has: a 16 kHz mono waveform."""
    if int(extractor.sampling_rate) != SAMPLE_RATE:
        raise ValueError(f"{where}: the checkpoint expects {extractor.sampling_rate} Hz audio; the "
                         f"pipeline's audio is {SAMPLE_RATE} Hz")
    if int(extractor.feature_size) != 1:
        raise ValueError(f"{where}: feature_size {extractor.feature_size}; a wav2vec2/HuBERT encoder "
                         "takes the raw waveform (feature_size 1)")
    return extractor


def settings_of(extractor: Wav2Vec2FeatureExtractor) -> dict[str, Any]:
    """The settings that decide the model's input, as plain JSON values."""
    return {"do_normalize": bool(extractor.do_normalize), "feature_size": int(extractor.feature_size),
            "padding_value": float(extractor.padding_value),
            "return_attention_mask": bool(extractor.return_attention_mask),
            "sampling_rate": int(extractor.sampling_rate)}


def settings_id(settings: Mapping[str, Any]) -> str:
    """``key=value`` pairs joined by ``;``, in a fixed order, for model ids in manifests."""
    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    return ";".join(f"{key}={text(settings[key])}" for key in sorted(settings))


def settings_from_id(model_id: str) -> dict[str, Any] | None:
    """The settings a manifest's model id (``name;key=value;...``) records; None when it records
    none (features made before the settings were followed: the raw waveform, do_normalize false)."""
    _, sep, pairs = str(model_id).partition(";")
    if not sep:
        return None
    settings: dict[str, Any] = {}
    for pair in pairs.split(";"):
        key, _, text = pair.partition("=")
        if key == "normalized_over":
            settings[key] = text
        elif key in ("do_normalize", "return_attention_mask"):
            settings[key] = text == "true"
        elif key in ("feature_size", "sampling_rate"):
            settings[key] = int(text)
        elif key == "padding_value":
            settings[key] = float(text)
        else:
            raise ValueError(f"unknown feature-extractor setting {key!r} in model id {model_id!r}")
    return settings
