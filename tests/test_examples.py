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


def test_compare_objectives(tmp_path):
    ex = load("compare_objectives")
    result = ex.main(ex.parse_args([
        "--epochs", "1", "--num-particles", "3", "--eval-samples", "5", "--khat-samples", "25", "--snr-repeats", "2",
        "--snr-ks", "1,2", "--only", "elbo,iwae,miwae,piwae", "--train-limit", "200", "--hidden", "16",
        "--latent-dim", "3", "--out", str(tmp_path), "--no-memory", "--quiet",
    ]))
    assert [r["objective"] for r in result.table] == ["elbo", "iwae", "miwae", "piwae"]
    assert [(r["num_outer"], r["num_particles"]) for r in result.table] == [(1, 1), (1, 3), (5, 10), (5, 10)]
    assert all(math.isfinite(r["test_log_likelihood"]) for r in result.table)
    assert (tmp_path / "table.md").read_text() == result.to_markdown()
