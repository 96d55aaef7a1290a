"""Examples are scripts with main(args); each is smoke-run here with tiny arguments."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart():
    ex = load("quickstart")
    out = ex.main(ex.parse_args(["--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--num-samples", "10", "--quiet"]))
    assert math.isfinite(out["test_ll"]) and out["test_ll"] < 0


def test_custom_model():
    ex = load("custom_model")
    ll = ex.main(ex.parse_args(["--epochs", "1", "--latent-dim", "3", "--num-samples", "10", "--quiet"]))
    assert math.isfinite(ll) and ll < 0
