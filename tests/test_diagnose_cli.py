"""``pyro-vae diagnose RUN_DIR``: a tiny trained run in, a report with figures out."""

from __future__ import annotations

import argparse
import json

import pytest

from pyro_vae.cli import diagnose
from pyro_vae.config import ConfigError, load_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pyro_vae.cli.run import train_run

    run_dir = tmp_path_factory.mktemp("run")
    config = load_config(None, {"run_dir": str(run_dir), "epochs": 1, "certify_digits": 0, "hidden": [16], "latent_dim": 3,
                                "eval_samples": 8})
    train_run(config, progress=False, figures=False, log=lambda *_: None)
    return run_dir


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pyro-vae")
    sub = parser.add_subparsers(dest="command")
    p = diagnose.add_parser(sub)
    assert isinstance(p, argparse.ArgumentParser)
    return parser.parse_args(argv)


def test_diagnose_writes_the_report_figures_and_headline(trained_run, capsys):
    ns = _parse(["diagnose", str(trained_run), "--samples", "100", "--num-points", "20", "--gap-steps", "10",
                 "--sbc-simulations", "100", "--no-progress"])
    assert ns.func is diagnose.run
    assert diagnose.run(ns) == 0
    out = trained_run / "diagnostics"
    for name in ("khat.png", "kl_per_dim.png", "sbc.png", "ppc.png", "ppc_examples.png"):
        assert (out / name).stat().st_size > 1000, name
    report = (out / "report.md").read_text()
    for heading in ("## Headline", "## 1. Importance diagnostics", "## 2. Inference gaps", "## 3. Latent space",
                    "## 4. Simulation-based calibration", "## 5. Predictive checks", "## Warnings"):
        assert heading in report, heading
    for figure in ("khat.png", "kl_per_dim.png", "sbc.png", "ppc.png"):
        assert f"]({figure})" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_points"] == 20 and summary["samples"] == 100 and summary["latent_dim"] == 3
    assert summary["khat_good"] + summary["khat_ok"] + summary["khat_bad"] == pytest.approx(1.0)
    assert summary["amortization_gap"] is not None and 0 <= summary["sbc_pvalue"] <= 1
    assert set(summary["ppc_pvalues"]) == {"mean", "variance", "zeros"}
    printed = capsys.readouterr().out
    for headline in ("Pareto k̂:", "good (≤0.5)", "mean amortization gap", "mean approximation gap", "active units",
                     "I(x; z)", "SBC p-value", "report:"):
        assert headline in printed, headline


def test_diagnose_can_skip_the_slow_parts(trained_run, capsys):
    assert diagnose.main([str(trained_run), "--samples", "50", "--num-points", "5", "--gap-steps", "0",
                          "--sbc-simulations", "0", "--no-progress"]) == 0
    report = (trained_run / "diagnostics" / "report.md").read_text()
    assert "Skipped (--gap-steps 0)." in report and "Skipped (--sbc-simulations 0)." in report
    assert "SampleSizeWarning" in report  # 50 samples are too few for a trustworthy k̂, and the report says so
    assert "not computed" in capsys.readouterr().out


def test_diagnose_refuses_bad_input(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="--samples must be >= 25"):
        diagnose.run(_parse(["diagnose", str(trained_run), "--samples", "10"]))
    with pytest.raises(ConfigError, match="--num-points must be >= 1"):
        diagnose.run(_parse(["diagnose", str(trained_run), "--num-points", "0"]))
    with pytest.raises(FileNotFoundError, match="not a pyro-vae run directory"):
        diagnose.run(_parse(["diagnose", str(tmp_path), "--no-progress"]))
