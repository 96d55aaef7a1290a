"""The README's two commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    blocks = bash_blocks()
    assert len(blocks) == 2, blocks
    train, test = blocks
    assert train.endswith("pyro-vae train") and "pip install" in train
    assert test.endswith("python -m pytest") and '".[dev]"' in test
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test in ci, "the .ci/run test command must be the README's, verbatim"


def test_constraints_admit_the_torch_on_this_machine():
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
