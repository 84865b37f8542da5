"""Where the real sample media lives (faces and speech recorded by other people).

One setting: the ``TH_MEDIA_DIR`` environment variable, defaulting to ``../shared/media`` beside
the repository. The media is never copied into the repository; demos fall back to synthesised
clips and tests skip when it is absent (except under ``CI=true``, where absence is an error).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "TH_MEDIA_DIR"


def media_dir() -> Path:
    """The configured media folder (which may not exist)."""
    return Path(os.environ.get(ENV_VAR, REPO_ROOT.parent / "shared" / "media")).resolve()


def media_available() -> bool:
    return (media_dir() / "lp_d20.mp4").is_file()
