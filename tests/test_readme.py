"""The README stays a short page whose every command runs: its code blocks are the quickstart's
steps or make targets that CI or a test runs, and each command it names in prose has a test."""
import re
from pathlib import Path

from tests.test_quickstart import quickstart_module

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKE_TARGETS = {"make setup", "make test", "make quickstart"}  # .ci/run runs make test (after setup)
# Commands the README names in prose and the test that runs each.
TESTED_ELSEWHERE = {"training.evaluate": "tests/test_evaluate.py", "models.weights": "tests/test_weights.py"}


def code_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_is_short():
    assert len(README.splitlines()) < 200


def test_every_command_in_a_code_block_is_run():
    steps = {command for _, command in quickstart_module().steps("out/quickstart", "MEDIA")}
    lines = code_lines()
    assert lines and "make test" in lines and "make quickstart" in lines
    for line in lines:
        assert line in MAKE_TARGETS or line in steps, f"README runs {line!r}, which neither the quickstart nor CI runs"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "\t$(PY) scripts/quickstart.py" in (ROOT / "Makefile").read_text().split("quickstart: setup")[1]


def test_every_command_named_in_prose_is_run():
    steps = " ".join(command for _, command in quickstart_module().steps("OUT", "MEDIA"))
    named = set(re.findall(r"python -m ([\w.]+)", README)) | set(re.findall(r"(pipeline/\w+\.py) --", README))
    assert {"training.sample", "training.animate", "training.evaluate", "models.weights"} <= named
    for command in named:
        if command in TESTED_ELSEWHERE:
            assert command in (ROOT / TESTED_ELSEWHERE[command]).read_text()
        else:
            assert command in steps, f"README names {command}, which no step of the quickstart runs"
