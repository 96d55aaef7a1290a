"""The ``pyro-vae`` command end to end at tiny size, every component swapped in by a config key,
and bad input refused before anything is written."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from PIL import Image

from pyro_vae.cli import main
from pyro_vae.cli.run import load_run, train_run
from pyro_vae.config import load_config

TINY = ["--epochs", "1", "--certify-digits", "0", "--hidden", "16", "--latent-dim", "3", "--eval-samples", "8", "--batch-size", "256",
        "--no-progress"]


def test_train_writes_a_complete_run_and_the_other_commands_use_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "test log p(x)" in out and "test ELBO" in out and "KL terms: z: analytic" in out
    for name in ("checkpoint.pt", "best.pt", "model.pt", "metrics.csv", "config.toml", "summary.json", "report.md",
                 "reconstructions.png", "samples.png", "latent.png", "loss_curves.png"):
        assert (run / name).is_file(), name
    for png in run.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and math.isfinite(summary["test_log_likelihood"])
    # an importance-sampled log-likelihood is a tighter bound than the ELBO (on average)
    assert summary["test_log_likelihood"] > summary["test_elbo"] - 1.0
    report = (run / "report.md").read_text()
    assert "| test | ELBO |" in report and "![latent.png](latent.png)" in report
    stored = load_config(run / "config.toml")
    assert stored.latent_dim == 3 and stored.hidden == [16]

    assert main(["evaluate", str(run), "--samples", "4", "--no-progress"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["eval_samples"] == 4
    assert main(["sample", str(run), "--num", "12", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    assert main(["reconstruct", str(run), "--num", "5"]) == 0
    assert (run / "reconstructions_test.png").is_file()
    assert main(["diagnose", str(run), "--samples", "100", "--num-points", "6", "--gap-steps", "5",
                 "--sbc-simulations", "30", "--no-progress"]) == 0
    assert (run / "diagnostics" / "report.md").is_file()
    assert "k̂" in capsys.readouterr().out

    # a second train into the same directory is refused and leaves the run untouched
    before = (run / "model.pt").read_bytes()
    assert main(["train", "--run-dir", str(run), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / "model.pt").read_bytes() == before

    # resume to more epochs continues from the checkpoint
    assert main(["train", "--run-dir", str(run), *TINY, "--epochs", "3", "--resume", "--no-figures"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_bad_config_is_refused_before_anything_is_written(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("latent_dimm = 3\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(bad), "--run-dir", str(run)]) == 2
    assert "did you mean 'latent_dim'" in capsys.readouterr().err
    assert not run.exists()
    assert main(["train", "--run-dir", str(run), "--binarize", "none"]) == 2
    assert "continuous_bernoulli" in capsys.readouterr().err
    assert not run.exists()


def test_a_trained_run_loads_back_in_python(tmp_path):
    """pv.load_run gives the trained VAE; pv.runs.Run.load (and the CLI's load_run) config, data and VAE."""
    import torch

    import pyro_vae as pv
    from pyro_vae.runs import eval_data

    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "--no-figures"]) == 0
    vae = pv.load_run(run)
    assert isinstance(vae, pv.VAE) and not vae.training
    stored = torch.load(run / "model.pt", weights_only=True)["model"]
    for k, v in vae.state_dict().items():
        torch.testing.assert_close(v, stored[k], rtol=0, atol=0)
    loaded = pv.runs.Run.load(str(run))
    config, data, vae2 = loaded  # unpacks like the tuple the CLI has always used
    assert config.latent_dim == 3 and config.run_dir == str(run) and data.x_dim == 784
    assert loaded.vae is vae2 and loaded.config is config
    torch.testing.assert_close(loaded.test, eval_data(data, config))
    summary = json.loads((run / "summary.json").read_text())
    torch.manual_seed(config.seed + 7)  # as the run scored its test set
    ll = pv.log_likelihood(vae.model, vae.guide, loaded.test, num_samples=config.eval_samples,
                           memory_budget=config.eval_memory_mb * 2**20)
    assert ll.mean == pytest.approx(summary["test_log_likelihood"], abs=1e-3)
    c, d, v = load_run(run)  # the CLI helper still returns (config, data, vae)
    assert c == config and isinstance(v, pv.VAE)


def test_evaluate_a_directory_that_is_not_a_run(tmp_path, capsys):
    import pyro_vae as pv

    with pytest.raises(FileNotFoundError):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a pyro-vae run directory"):
        pv.load_run(tmp_path)
    corrupt = tmp_path / "r"
    corrupt.mkdir()
    (corrupt / "config.toml").write_text('run_dir = "x"\n')
    (corrupt / "model.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(corrupt)]) == 2
    assert "not a readable pyro_vae checkpoint" in capsys.readouterr().err


SWAPS = [
    {"encoder": "low_rank_normal"},
    {"encoder": "iaf"},
    {"prior": "diagonal_gaussian"},
    {"prior": "mixture_gaussian"},
    {"prior": "vamp"},
    {"prior": "flow"},
    {"decoder": "continuous_bernoulli", "binarize": "none"},
    {"decoder": "gaussian", "binarize": "none"},
    {"decoder": "gaussian", "binarize": "none", "gaussian_scale": 0.1},
    {"decoder": "discretized_logistic", "binarize": "none", "pixel_scale": "uint8"},
    {"decoder": "poisson", "binarize": "none", "pixel_scale": "uint8"},
    {"decoder": "negative_binomial", "binarize": "none", "pixel_scale": "uint8"},
    {"network": "conv"},
    {"binarize": "static"},
    {"dataset": "sklearn-digits"},
]


@pytest.mark.parametrize("swap", SWAPS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_every_component_swaps_into_the_default_run_by_a_config_key(tmp_path, swap):
    config = load_config(None, {"run_dir": str(tmp_path / "run"), "epochs": 1, "hidden": [16], "latent_dim": 3,
                                "certify_digits": 2, "certify_steps": 5, "certify_chains": 2, "eval_samples": 4, "batch_size": 500, "prior_components": 5, **swap})
    summary = train_run(config, progress=False, figures=False, log=lambda *_: None)
    assert math.isfinite(summary.test_elbo) and math.isfinite(summary.test_log_likelihood)
    assert summary.ais is not None and math.isfinite(summary.ais["ais_mean"])  # AIS runs on every component
    expected_kl = "analytic" if config.encoder == "diag_normal" and config.prior in ("standard_normal", "diagonal_gaussian") else "monte carlo"
    assert summary.kl_sites == {"z": expected_kl}


def test_console_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "pyro_vae", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "train" in res.stdout and "evaluate" in res.stdout


OBJECTIVE_SWAPS = [
    {"objective": "iwae", "num_particles": 3},
    {"objective": "iwae_stl", "num_particles": 3},
    {"objective": "dreg", "num_particles": 3},
    {"objective": "renyi", "num_particles": 3, "renyi_alpha": 0.5},
    {"objective": "miwae", "num_particles": 2, "num_outer": 2},
    {"objective": "ciwae", "num_particles": 3},
    {"objective": "piwae", "num_particles": 2, "num_outer": 2},
    {"kl_beta": 0.5},
    {"kl_warmup_steps": 10},
    {"free_bits": 0.1},
]


@pytest.mark.parametrize("swap", OBJECTIVE_SWAPS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_every_objective_swaps_in_by_a_config_key(tmp_path, swap):
    from pyro_vae.build import build_objective

    config = load_config(None, {"run_dir": str(tmp_path / "run"), "epochs": 1, "hidden": [16], "latent_dim": 3, "certify_digits": 0,
                                "eval_samples": 4, "batch_size": 500, **swap})
    summary = train_run(config, progress=False, figures=False, log=lambda *_: None)
    assert math.isfinite(summary.test_elbo) and math.isfinite(summary.test_log_likelihood)
    obj = build_objective(config)
    assert obj.num_particles == swap.get("num_particles", 1) * swap.get("num_outer", 1)


def test_train_certifies_the_first_test_digits_with_ais(tmp_path):
    """The default run's report has AIS beside IS on the first certify_digits test digits; the summary's
    gap is the mean of the per-digit gaps written beside it."""
    import json

    run = tmp_path / "run"
    flags = [f for f in TINY if f not in ("--certify-digits", "0")]
    assert main(["train", "--run-dir", str(run), *flags, "--certify-digits", "3", "--certify-steps", "20",
                 "--certify-chains", "2", "--no-figures"]) == 0
    cert = json.loads((run / "ais_certificate.json").read_text())
    rows = cert["per_datapoint"]
    assert len(rows) == 3 and cert["summary"]["num_steps"] == 20 and cert["summary"]["num_chains"] == 2
    for r in rows:
        assert r["ais_minus_is"] == pytest.approx(r["ais"] - r["is"], abs=1e-9)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ais"]["ais_minus_is"] == pytest.approx(sum(r["ais_minus_is"] for r in rows) / 3, abs=1e-9)
    report = (run / "report.md").read_text()
    assert "## Log-likelihood by annealed importance sampling" in report and "certify_digits" in report
