"""Options that older runs recorded and the code no longer has.

Checkpoints and run configs keep every key they were written with. A removed option recorded at the
value that turned it off changes nothing, so it is dropped when the config is read and the
checkpoint loads and resumes as before; any other value names the commit whose code ran it.
Why each option went: docs/training.md#options-the-studies-rejected.
"""
from __future__ import annotations

from typing import Any, Mapping

LAST_COMMIT = "5685ff3"  # the last commit with these options
MODEL = {"input_skip": False, "input_skip_sigma": 0.0}
DIFFUSION = {"parametrization": "x0", "sigma_data": 1.0, "shift": 1.0}


class RetiredOptionError(ValueError):
    """A config uses a removed option at a value that changed what the model computes."""


def drop_retired(values: Mapping[str, Any], retired: Mapping[str, Any], section: str) -> dict[str, Any]:
    """``values`` without the ``retired`` keys, which must hold their off values."""
    out = dict(values)
    for key, off in retired.items():
        if key in out and out.pop(key) != off:
            raise RetiredOptionError(
                f"{section}.{key}={values[key]} was removed (off is {off!r}); the run was made with "
                f"commit {LAST_COMMIT} or earlier, which still has it")
    return out
