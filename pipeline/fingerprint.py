"""The settings that decide an output, stored with it, so that a rerun never mixes two datasets.

The first run writes ``OUT/fingerprint.json``: every config value that can change what the job
writes (clip lengths, shot split, decoding size, the crop rule and its landmark backend, identity
and split settings, the filters' modes and, in drop mode, their thresholds, the models and their
input settings, random-weight seeds) as dotted keys, and, once the workers have loaded them, the
hash of every model's weights. A rerun (a resume, or a grown input set) compares its own values
and is refused, naming the keys that differ, before it writes anything. Settings that only decide
how the work runs (``ray``, ``work``, ``progress``, timeouts, batch sizes, the CPU runtime, where
the weights live) are not part of it. An output made before fingerprints existed adopts one: from
its ``config.yaml`` when it has one (the last run's settings), else from the run that finds it.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from pipeline.outdir import OutputDir

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
FORMAT_VERSION = 1

# Config sections whose values decide the output; everything else (ray, work, probe, progress)
# decides only how the work runs.
OUTPUT_SECTIONS = ("weights", "shots", "clips", "decode", "faces", "identity", "filters", "models", "split")
# Keys of those sections that cannot change what is written.
NOT_OUTPUT = frozenset({
    "weights.dir",                          # where the files are: their hashes are compared instead
    "shots.timeout_s", "decode.timeout_s",
    "decode.chunk_frames",                  # frames decoded at a time
    "decode.reuse_frames_mb",               # decode once or twice: the same frames either way
    "faces.landmark_weights", "identity.weights",
    "models.device", "models.cpu_runtime", "models.onnx_cache_dir",
    "models.motion_extractor.weights", "models.syncnet.weights", "models.audio_encoder.weights",
    "models.motion_extractor.batch_size", "filters.sync.batch_size",
})
WEIGHTS_PREFIX = "weights_hash."
IDENTITY_THRESHOLD = "identity.threshold"


class FingerprintError(ValueError):
    """The output was made with other settings (the message names the keys)."""


def _flatten(value: Any, prefix: str, into: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), into)
    else:
        into[prefix] = value


def _is_threshold(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return leaf == "threshold" or leaf.startswith(("min_", "max_"))


def output_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted config values that decide the output (``cfg``: a resolved plain mapping).

    A filter in score mode keeps every clip whatever its thresholds, so they count only in drop
    mode; its mode and scoring settings always count."""
    flat: dict[str, Any] = {}
    for section in OUTPUT_SECTIONS:
        if section in cfg:
            _flatten(cfg[section], section, flat)
    if flat.get(IDENTITY_THRESHOLD, "absent") is None:
        flat[IDENTITY_THRESHOLD] = resolved_identity_threshold(flat.get("identity.backend"))
    for key in list(flat):
        parts = key.split(".")
        if key in NOT_OUTPUT:
            del flat[key]
        elif parts[0] == "filters" and len(parts) == 3 and _is_threshold(key) \
                and cfg["filters"][parts[1]].get("mode", "drop") != "drop":
            del flat[key]
    return flat


def resolved_identity_threshold(backend: Any) -> float | None:
    """``identity.threshold: null`` as applied: the backend's default grouping threshold, so that a
    default changed by a later version counts as a change (None for ``identity.backend=none``)."""
    from models.face_identity import BACKEND_MODELS, identity_threshold  # OpenCV and dlib: only when needed

    return identity_threshold(backend) if backend in BACKEND_MODELS else None


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key (stored -> current)`` for every key both hold with other values, sorted. A key only
    one side holds (a setting added by a later version of the job) is left out."""
    return [f"{key} ({stored[key]!r} -> {current[key]!r})" for key in sorted(stored.keys() & current.keys())
            if stored[key] != current[key]]


def read(out: OutputDir) -> dict[str, Any] | None:
    return json.loads(out.read_bytes(FINGERPRINT_FILE)) if out.exists(FINGERPRINT_FILE) else None


def write(out: OutputDir, settings: Mapping[str, Any], weight_hashes: Mapping[str, str] | None,
          adopted_from: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"format_version": FORMAT_VERSION, "settings": dict(settings)}
    if weight_hashes is not None:
        record["weight_hashes"] = dict(sorted(weight_hashes.items()))
    if adopted_from:
        record["adopted_from"] = adopted_from
    out.write_bytes(FINGERPRINT_FILE, json.dumps(record, indent=1, sort_keys=True, default=str).encode())
    return record


def refusal(out: OutputDir, diffs: list[str]) -> FingerprintError:
    return FingerprintError(
        f"{out.root} was made with other settings; differing: {'; '.join(diffs)}. Run with the settings "
        f"in its config.yaml, or write to a new output")


def check_settings(out: OutputDir, cfg: Mapping[str, Any], adopt: Mapping[str, Any] | None,
                   store: bool = True) -> dict[str, Any]:
    """Compare this run's output settings with the stored fingerprint (``adopt``: the plain config
    an older output without one was made with, when known). Raises ``FingerprintError`` naming
    the differing keys; writes nothing then. Returns the record to keep, stored at once when
    ``store``, else by ``store_record`` once the run is sure to write."""
    current = output_settings(cfg)
    stored = read(out)
    if stored is None:
        if adopt is not None:
            stored = {"settings": output_settings(adopt), "adopted_from": "config.yaml"}
        else:
            stored = {"settings": current}
    if stored["settings"].get(IDENTITY_THRESHOLD, "absent") is None and current.get(IDENTITY_THRESHOLD) is not None:
        # fingerprints written before the default was resolved recorded null: take today's
        log.warning("the output's fingerprint records %s as the backend's default; taking %r",
                    IDENTITY_THRESHOLD, current[IDENTITY_THRESHOLD])
        stored = {**stored, "settings": {**stored["settings"], IDENTITY_THRESHOLD: current[IDENTITY_THRESHOLD]}}
    diffs = differences(stored["settings"], current)
    if diffs:
        raise refusal(out, diffs)
    for key in sorted(current.keys() - stored["settings"].keys()):
        log.warning("setting %s is not in the output's fingerprint (made by an older version); "
                    "taking %r", key, current[key])
    return store_record(out, stored) if store else stored


def store_record(out: OutputDir, stored: dict[str, Any]) -> dict[str, Any]:
    """Write the fingerprint ``check_settings`` returned, when the output has none yet."""
    if out.exists(FINGERPRINT_FILE):
        return stored
    log.info("storing the output's fingerprint%s", " (adopted from its config.yaml)"
             if stored.get("adopted_from") else "")
    return write(out, stored["settings"], stored.get("weight_hashes"), stored.get("adopted_from"))


def check_weights(out: OutputDir, weight_hashes: Mapping[str, str],
                  done_hashes: Mapping[str, str] | None = None) -> None:
    """Compare the hashes of the weights the workers loaded with the stored ones, storing them
    when the fingerprint has none yet (``done_hashes``: those an older output's done chunks
    recorded, adopted first). Raises ``FingerprintError`` naming the differing models."""
    stored = read(out)
    if stored is None:
        raise FingerprintError(f"{out.root} has no {FINGERPRINT_FILE}: check_settings runs first")
    known = stored.get("weight_hashes")
    if known is None and done_hashes:
        known = dict(done_hashes)
    current = {f"{WEIGHTS_PREFIX}{k}": v for k, v in weight_hashes.items()}
    if known is not None:
        diffs = differences({f"{WEIGHTS_PREFIX}{k}": v for k, v in known.items()}, current)
        if diffs:
            raise refusal(out, diffs)
    if stored.get("weight_hashes") is None:
        write(out, stored["settings"], {**(known or {}), **weight_hashes}, stored.get("adopted_from"))
