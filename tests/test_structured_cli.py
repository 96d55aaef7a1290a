"""`pyro-vae train --model hierarchical|conditional|semisupervised` on the embedded digits (issue 12)."""

from __future__ import annotations

import json
import math

import pytest

from pyro_vae.cli import main

TINY = ["--epochs", "1", "--eval-samples", "30", "--batch-size", "500", "--no-progress", "--no-figures"]


@pytest.mark.parametrize("model", ["hierarchical", "conditional", "semisupervised"])
def test_train_writes_report_with_loglik_khat_and_accuracy(tmp_path, model):
    run = tmp_path / model
    assert main(["train", "--model", model, "--run-dir", str(run), *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == model
    # a log-likelihood per datapoint of binarized 784-pixel digits, below 0 and above the uniform model's
    assert -784 * math.log(2) < summary["test_log_likelihood"] < 0
    assert summary["test_elbo"] <= summary["test_log_likelihood"] + 5 * summary["test_log_likelihood_se"]
    assert 0.0 <= summary["khat_share_above_0_7"] <= 1.0 and math.isfinite(summary["khat_median"])
    report = (run / "report.md").read_text()
    assert "test log p(x)" in report and "Pareto k̂" in report
    if model == "semisupervised":
        assert 0.1 < summary["test_accuracy"] <= 1.0 and 0.1 < summary["baseline_accuracy"] <= 1.0
        assert summary["num_labelled"] == 100 and "labelled digits alone" in report


def test_structured_runs_refuse_resume_and_loading_back_with_the_fix(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "hierarchical", "--run-dir", str(run), "--resume", *TINY]) == 2
    assert "--resume applies to model = 'vae' only" in capsys.readouterr().err
    assert not run.exists()
    assert main(["train", "--model", "hierarchical", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    assert "supports model = 'vae' only" in capsys.readouterr().err
