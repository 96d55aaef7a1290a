"""AIS where numbers are compared: ``pyro-vae evaluate --method ais``, ``pyro-vae bdmc``,
``compare_objectives(rank_by="ais")``, ``compare_models(rank_by="ais")`` and ``diagnose --ais-subset``.

The AIS numbers the commands write are checked against an independent, hand-written AIS
(``benchmarks/ais.py``'s :class:`HandAIS`, plain torch, the run's weights read out) run with the
same schedule, chains, leapfrog steps and the step sizes the command recorded; the rest against
the per-digit numbers the command wrote (differences, means, ranks) and the files on disk.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import time

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import ConfigError, load_config

TINY_RUN = {"epochs": 1, "certify_digits": 0, "hidden": [16], "latent_dim": 3, "eval_samples": 8}
AIS_FLAGS = ["--ais-steps", "30", "--ais-chains", "8", "--ais-leapfrog", "3"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pyro_vae.cli.run import train_run

    run_dir = tmp_path_factory.mktemp("run")
    train_run(load_config(None, {"run_dir": str(run_dir), **TINY_RUN}), progress=False, figures=False,
              log=lambda *_: None)
    return run_dir


def _hand_ais(run_dir, rows, steps: int, chains: int, leapfrog: int, seed: int = 1) -> torch.Tensor:
    """The independent reference: HandAIS on the same digits with the step sizes the command recorded."""
    from benchmarks.ais import HandAIS
    from pyro_vae.evaluation.annealing import schedule
    from pyro_vae.runs import Run, eval_data

    config, data, vae = Run.load(run_dir)
    x = eval_data(data, config)[: len(rows)]
    eps = torch.tensor([r["step_size"] for r in rows])
    torch.manual_seed(seed)
    runs = [HandAIS(vae).run(x, schedule("sigmoid", steps), eps, chains, leapfrog)["per_datapoint"] for _ in range(3)]
    return torch.stack(runs).mean(0).double()


def _png(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# evaluate --method ais
# ---------------------------------------------------------------------------------------------
def test_evaluate_method_ais_writes_ais_beside_is(trained_run, capsys):
    run = trained_run
    before = (run / "report.md").read_text()
    def argv(subset: int) -> list[str]:
        return ["evaluate", str(run), "--method", "ais", *AIS_FLAGS, "--ais-subset", str(subset), "--samples", "200",
                "--no-progress"]

    assert main(argv(6)) == 0
    printed = capsys.readouterr().out
    assert "AIS on the first 6 test digits" in printed and "AIS − IS" in printed
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["eval_samples"] == 200 and ev["num_test"] == 500  # IS on the whole test split, as before
    block = ev["ais"]
    s, rows = block["summary"], block["per_datapoint"]
    assert s["num_data"] == 6 and s["num_steps"] == 30 and s["num_chains"] == 8 and s["num_leapfrog"] == 3
    assert len(rows) == 6 and [r["digit"] for r in rows] == list(range(6))
    for r in rows:  # every column the report promises, per digit
        assert r["ais_minus_is"] == pytest.approx(r["ais"] - r["is"], abs=1e-9)
        assert r["ais_chain_se"] >= 0 and 1 <= r["ais_ess"] <= 8 + 1e-6 and 0 <= r["accept_rate"] <= 1
        assert 1 <= r["is_ess"] <= 200 + 1e-6 and math.isfinite(r["is_khat"]) and r["step_size"] > 0
    assert s["ais_mean"] == pytest.approx(sum(r["ais"] for r in rows) / 6, abs=1e-9)
    assert s["ais_minus_is"] == pytest.approx(sum(r["ais_minus_is"] for r in rows) / 6, abs=1e-9)
    # the AIS column agrees with the hand-written AIS on the same digits within Monte Carlo error
    hand = _hand_ais(run, rows, 30, 8, 3)
    lib = torch.tensor([r["ais"] for r in rows], dtype=torch.float64)
    se = torch.tensor([r["ais_chain_se"] for r in rows], dtype=torch.float64)
    assert abs(float((lib - hand).mean())) < 4 * float(se.pow(2).sum().sqrt()) / 6 + 0.05
    # the run's report gets one AIS section beside what train wrote, and the figure
    report = (run / "report.md").read_text()
    from pyro_vae.cli.ais import AIS_SECTION

    assert report.startswith(before.rstrip("\n")) and report.count(AIS_SECTION) == 1
    assert "| log p(x), AIS |" in report and "AIS − IS" in report and "![ais_vs_is.png](ais_vs_is.png)" in report
    _png(run / "ais_vs_is.png")
    # a second evaluation replaces the section instead of appending another
    assert main(argv(4)) == 0
    report = (run / "report.md").read_text()
    assert report.count(AIS_SECTION) == 1 and "The first 4 test digits" in report
    # plain evaluate keeps its old output (no AIS block)
    assert main(["evaluate", str(run), "--samples", "4", "--no-progress"]) == 0
    assert "ais" not in json.loads((run / "evaluation.json").read_text())


def test_evaluate_refuses_bad_ais_flags_before_writing(trained_run, capsys):
    run = trained_run
    ev = run / "evaluation.json"
    before = ev.read_bytes() if ev.exists() else None
    report = (run / "report.md").read_bytes()
    cases = [
        (["--ais-steps", "100"], "--ais-steps applies to AIS only; add --method ais"),
        (["--method", "ais", "--ais-steps", "1"], "--ais-steps must be >= 2"),
        (["--method", "ais", "--ais-chains", "0"], "--ais-chains must be >= 1"),
        (["--method", "ais", "--ais-leapfrog", "0"], "--ais-leapfrog must be >= 1"),
        (["--method", "ais", "--ais-subset", "0"], "--ais-subset must be >= 1"),
        (["--method", "ais", "--seed", "-1"], "--seed must lie in"),
    ]
    for flags, message in cases:
        assert main(["evaluate", str(run), *flags, "--no-progress"]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (ev.read_bytes() if ev.exists() else None) == before
    assert (run / "report.md").read_bytes() == report


# ---------------------------------------------------------------------------------------------
# bdmc
# ---------------------------------------------------------------------------------------------
def test_bdmc_writes_the_sandwich_report(trained_run, capsys):
    run = trained_run
    assert main(["bdmc", str(run), "--steps", "30,10", "--chains", "4", "--leapfrog", "3", "--num-data", "4",
                 "--test-digits", "5", "--samples", "100", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "10 temperatures: lower" in printed and "30 temperatures: lower" in printed and "report:" in printed
    out = run / "bdmc"
    s = json.loads((out / "summary.json").read_text())
    assert [r["num_steps"] for r in s["sandwich"]] == [10, 30]  # sorted
    for r in s["sandwich"]:
        assert math.isfinite(r["lower"]) and math.isfinite(r["upper"])
        assert r["gap"] == pytest.approx(r["upper"] - r["lower"], abs=1e-4)  # mean gap = mean upper − mean lower
    t = s["test"]
    assert t["num_data"] == 5 and t["num_steps"] == 30 and len(s["test_per_datapoint"]) == 5
    assert t["ais_minus_is"] == pytest.approx(sum(r["ais_minus_is"] for r in s["test_per_datapoint"]) / 5, abs=1e-9)
    report = (out / "report.md").read_text()
    for heading in ("# pyro-vae BDMC report", "## What this certifies", "## The sandwich against the number of temperatures",
                    "## AIS against importance sampling on test digits", "![sandwich.png](sandwich.png)",
                    "![ais_vs_is.png](ais_vs_is.png)"):
        assert heading in report, heading
    _png(out / "sandwich.png")
    _png(out / "ais_vs_is.png")


def test_bdmc_refuses_bad_input_before_writing(trained_run, tmp_path, capsys):
    run = trained_run
    out = tmp_path / "never"
    cases = [
        (["--steps", "1,10"], "every number of temperatures must be >= 2"),
        (["--steps", "ten"], "--steps must be comma-separated integers"),
        (["--steps", ","], "--steps is empty"),
        (["--chains", "0"], "--chains must be >= 1"),
        (["--leapfrog", "0"], "--leapfrog must be >= 1"),
        (["--num-data", "0"], "--num-data must be >= 1"),
        (["--test-digits", "-1"], "--test-digits must be >= 0"),
        (["--samples", "10"], "--samples must be >= 25"),
        (["--seed", "-3"], "--seed must lie in"),
    ]
    for flags, message in cases:
        assert main(["bdmc", str(run), *flags, "--out", str(out), "--no-progress"]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("pyro-vae bdmc: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bdmc", str(empty), "--no-progress"]) == 2
    assert "not a pyro-vae run directory" in capsys.readouterr().err
    assert list(empty.iterdir()) == []  # no lock file, no bdmc folder


def test_bdmc_refuses_a_run_another_process_writes_into(trained_run, capsys):
    code = ("import sys, time; from pyro_vae.train.state import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(trained_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        assert main(["bdmc", str(trained_run), "--steps", "5", "--num-data", "1", "--test-digits", "0",
                     "--no-progress"]) == 2
        assert time.perf_counter() - t0 < 20
        assert f"PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


# ---------------------------------------------------------------------------------------------
# the leapfrog's gradient precision: evaluate --ais-precision, bdmc --gradient-precision
# ---------------------------------------------------------------------------------------------
QUICK_AIS = ["--method", "ais", "--ais-steps", "8", "--ais-chains", "2", "--ais-leapfrog", "2", "--ais-subset", "2",
             "--samples", "4", "--no-progress"]
BF16_WORDS = "leapfrog gradients in bfloat16 (densities, weights and Metropolis test in full precision)"


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run (these tests write into it; the module's run stays as it was)."""
    import shutil

    return shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock*", "*.lock"))


def test_precision_choices_are_the_librarys():
    from pyro_vae.cli.ais import PRECISION_CHOICES
    from pyro_vae.evaluation.annealing import PRECISIONS

    assert PRECISION_CHOICES == PRECISIONS


def test_evaluate_ais_precision_is_recorded_and_reported(run_copy, capsys):
    from pyro_vae.cli.ais import AIS_SECTION, ais_section

    run = run_copy
    for precision, words in (("full", "full-precision gradients"), ("bfloat16", BF16_WORDS)):
        assert main(["evaluate", str(run), *QUICK_AIS, "--ais-precision", precision]) == 0, precision
        block = json.loads((run / "evaluation.json").read_text())["ais"]
        assert block["summary"]["gradient_precision"] == precision
        assert all(math.isfinite(r["ais"]) for r in block["per_datapoint"])
        report = (run / "report.md").read_text()
        assert report.count(AIS_SECTION) == 1 and words in report, report
        other = BF16_WORDS if precision == "full" else "full-precision gradients"
        assert other not in report
    capsys.readouterr()
    # a summary written before the precision was recorded still renders (as full precision)
    del block["summary"]["gradient_precision"]
    assert "full-precision gradients" in ais_section(block)
    # the sentence `pyro-vae train` rewrites for its certificate is still there
    assert "Written by `pyro-vae evaluate --method ais`." in ais_section(block)


@pytest.mark.parametrize("argv, where, expected", [
    (["evaluate", "{run}", *QUICK_AIS], "pyro_vae.evaluation.annealing.ais", "auto"),
    (["evaluate", "{run}", *QUICK_AIS, "--ais-precision", "bfloat16"], "pyro_vae.evaluation.annealing.ais", "bfloat16"),
    (["bdmc", "{run}", "--steps", "5", "--num-data", "1", "--out", "{out}", "--no-progress"],
     "pyro_vae.evaluation.bidirectional.bdmc", "auto"),
    (["bdmc", "{run}", "--steps", "5", "--num-data", "1", "--out", "{out}", "--gradient-precision", "full",
      "--no-progress"], "pyro_vae.evaluation.bidirectional.bdmc", "full"),
])
def test_the_precision_flag_reaches_the_library(run_copy, tmp_path, monkeypatch, argv, where, expected):
    """The default is "auto" (the library's), and the flag's value is what the library is called with."""
    class Called(Exception):
        pass

    def spy(*args, **kwargs):
        raise Called(kwargs.get("gradient_precision"))

    monkeypatch.setattr(where, spy)
    argv = [a.format(run=run_copy, out=tmp_path / "bdmc") for a in argv]
    with pytest.raises(Called) as e:
        main(argv)
    assert e.value.args == (expected,)


def test_precision_flags_are_refused_before_writing(run_copy, tmp_path, capsys):
    run = run_copy
    ev, report = run / "evaluation.json", run / "report.md"
    before = (ev.read_bytes() if ev.exists() else None, report.read_bytes())
    # --ais-precision without --method ais: the message of the other --ais-* flags
    assert main(["evaluate", str(run), "--ais-precision", "full", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--ais-precision applies to AIS only; add --method ais" in err and len(err.strip().splitlines()) == 1
    # a value outside the choices: argparse refuses it (exit code 2) and names the choices
    out = tmp_path / "never"
    for argv in (["evaluate", str(run), *QUICK_AIS, "--ais-precision", "half"],
                 ["bdmc", str(run), "--gradient-precision", "fp16", "--out", str(out), "--no-progress"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice" in err and "'auto', 'full', 'bfloat16'" in err, err
    assert (ev.read_bytes() if ev.exists() else None, report.read_bytes()) == before
    assert not out.exists()


def test_a_bfloat16_failure_names_the_commands_flag(run_copy, tmp_path, monkeypatch, capsys):
    """The library's refusal of bfloat16 gradients (fix: gradient_precision='full') is a one-line error, exit
    code 2, whose fix is the command's flag."""
    def refuse(*args, **kwargs):
        raise RuntimeError("the program failed under bfloat16 autocast (TypeError: x); use gradient_precision='full'")

    monkeypatch.setattr("pyro_vae.evaluation.annealing.ais", refuse)
    monkeypatch.setattr("pyro_vae.evaluation.bidirectional.bdmc", refuse)
    for argv, fix in ((["evaluate", str(run_copy), *QUICK_AIS, "--ais-precision", "bfloat16"], "--ais-precision full"),
                      (["bdmc", str(run_copy), "--steps", "5", "--gradient-precision", "bfloat16",
                        "--out", str(tmp_path / "b"), "--no-progress"], "--gradient-precision full")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "bfloat16 autocast" in err and f"use {fix}" in err and len(err.strip().splitlines()) == 1, err


def test_bdmc_records_the_gradient_precision(run_copy, tmp_path, capsys):
    out = tmp_path / "bdmc"
    assert main(["bdmc", str(run_copy), "--steps", "6", "--chains", "2", "--leapfrog", "2", "--num-data", "2",
                 "--test-digits", "2", "--samples", "25", "--gradient-precision", "full", "--out", str(out),
                 "--no-progress"]) == 0
    assert "full gradients" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert s["gradient_precision"] == "full" and s["gradient_precision_requested"] == "full"
    assert [r["gradient_precision"] for r in s["sandwich"]] == ["full"]
    assert s["test"]["gradient_precision"] == "full"
    report = (out / "report.md").read_text()
    assert "full-precision gradients" in report and "bfloat16" not in report


# ---------------------------------------------------------------------------------------------
# compare_objectives(rank_by="ais") and compare_models(rank_by="ais")
# ---------------------------------------------------------------------------------------------
TINY = {"hidden": [16], "latent_dim": 3, "epochs": 1}


def test_compare_objectives_ranks_by_ais():
    C = importlib.import_module("pyro_vae.experiments.compare")
    torch.set_num_threads(1)
    res = C.compare_objectives(
        ["elbo", "iwae"], TINY, num_particles=3, train_limit=128, eval_samples=20, khat_samples=100,
        val_samples=None, snr_repeats=2, snr_ks=(), memory=False, progress=False, rank_by="ais", ais_subset=5,
        ais_options={"num_steps": 20, "num_chains": 4, "num_leapfrog": 2},
    )
    assert res.settings["rank_by"] == "ais" and res.settings["ais_subset"] == 5
    a = {k: torch.tensor(v, dtype=torch.float64) for k, v in res.ais_log_likelihoods.items()}
    assert set(a) == {"elbo", "iwae"} and all(v.numel() == 5 for v in a.values())
    for row in res.table:
        lab = row["objective"]
        assert row["ais_num_data"] == 5
        assert row["ais_log_likelihood"] == pytest.approx(float(a[lab].mean()), abs=1e-9)
        is_subset = torch.tensor(res.log_likelihoods[lab][:5], dtype=torch.float64)
        assert row["ais_minus_is"] == pytest.approx(float((a[lab] - is_subset).mean()), abs=1e-9)
    d = a["iwae"] - a["elbo"]
    assert res.table[1]["ais_delta"] == pytest.approx(float(d.mean()), abs=1e-9)
    assert res.table[1]["ais_delta_se"] == pytest.approx(float(d.std() / math.sqrt(5)), rel=1e-9)
    best = max(res.table, key=lambda r: r["ais_log_likelihood"])
    assert best["rank"] == 1 and sorted(r["rank"] for r in res.table) == [1, 2]
    assert res.ranking[0] == best["objective"] and res.certified
    md = res.to_markdown()
    assert "Ranking by AIS on the first 5 test digits" in md and "AIS log p(x) (5 digits)" in md
    assert res.to_dict()["ais_log_likelihoods"] == res.ais_log_likelihoods


def test_an_is_ranking_with_bad_khat_is_uncertified_and_says_how_to_certify():
    from pyro_vae.experiments.result import COLUMNS, ComparisonResult

    def row(name, ll, bad):
        r = {k: 0 for k in COLUMNS}
        r.update(objective=name, test_log_likelihood=ll, test_log_likelihood_se=0.1, khat_median=0.8,
                 khat_over_0_7=bad, num_outer=1, num_particles=1, memory_method="x", rank=0)
        return r

    call = 'pv.compare_objectives([\'elbo\', \'iwae\'], {}, rank_by="ais", ais_subset=50)'
    res = ComparisonResult([row("elbo", -100.0, 0.0), row("iwae", -99.0, 0.3)],
                           settings={"rank_by": "is", "certify_call": call, "eval_samples": 10})
    assert not res.certified and res.ranking == ["iwae", "elbo"]
    md = res.to_markdown()
    assert "**Ranking uncertified**" in md and call in md and "iwae (30%)" in md and "--rank-by ais" in md
    ok = ComparisonResult([row("elbo", -100.0, 0.0)], settings={"rank_by": "is"})
    assert ok.certified and "k̂ ≤ 0.7" in ok.to_markdown()
    # the call compare_objectives records repeats the comparison ranked by AIS
    C = importlib.import_module("pyro_vae.experiments.compare")
    text = C._certify_call(["elbo", "iwae"], {"epochs": 3}, 5, None, 5000, 50, {})
    assert text == "pv.compare_objectives(['elbo', 'iwae'], {'epochs': 3}, num_particles=5, rank_by=\"ais\", ais_subset=50)"


@pytest.mark.parametrize("kwargs, message", [
    ({"rank_by": "loo"}, "rank_by must be 'is'"),
    ({"rank_by": "ais", "ais_subset": 0}, "ais_subset must be an integer >= 1"),
    ({"rank_by": "ais", "ais_options": {"num_steps": 1}}, r"ais_options\['num_steps'\] must be an integer >= 2"),
    ({"rank_by": "ais", "ais_options": {"num_chains": 0}}, r"ais_options\['num_chains'\] must be an integer >= 1"),
    ({"rank_by": "ais", "ais_options": {"steps": 10}}, "unknown option"),
    ({"ais_options": {"num_steps": 10}}, "only with rank_by='ais'"),
])
def test_compare_objectives_refuses_bad_ais_options_before_training(monkeypatch, kwargs, message):
    C = importlib.import_module("pyro_vae.experiments.compare")

    def boom(*a, **k):
        raise AssertionError("trained despite bad input")

    monkeypatch.setattr(C, "_train", boom)
    monkeypatch.setattr(C, "build_vae", boom)
    with pytest.raises(ConfigError, match=message):
        C.compare_objectives(["elbo", "iwae"], TINY, progress=False, **kwargs)


def test_compare_cli_ais_flags(tmp_path, capsys):
    from pyro_vae.cli.compare import main as compare_main

    assert compare_main(["--objectives", "elbo", "--ais-steps", "10", "--out", str(tmp_path / "a")]) == 2
    assert "--rank-by ais only" in capsys.readouterr().err
    assert compare_main(["--objectives", "elbo", "--rank-by", "ais", "--ais-chains", "0",
                         "--out", str(tmp_path / "b")]) == 2
    assert "--ais-chains must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_compare_models_by_ais_recovers_the_exact_ranking():
    """Linear-Gaussian models with closed-form log p(x): a too-narrow guide makes IS rank the true model
    last and marks the ranking uncertified; AIS from the same guide ranks it first."""
    import warnings

    from pyro_vae import diagnostics as D
    from pyro_vae.testing import LinearGaussian

    truth = LinearGaussian(x_dim=5, latent_dim=3, noise_scale=0.5, seed=0)
    worse = LinearGaussian(x_dim=5, latent_dim=3, noise_scale=0.8, seed=0)
    x = truth.sample(12, generator=torch.Generator().manual_seed(5))
    models = {"true, narrow guide": (truth.model, truth.scaled_guide(0.2)), "worse, exact guide": (worse.model, worse.exact_guide)}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        is_df = D.compare_models(models, x, num_samples=200)
    assert is_df.attrs["certified"] is False and 'rank_by="ais"' in is_df.attrs["certify"]
    assert any(issubclass(w.category, D.KhatWarning) and "certify it with compare_models" in str(w.message) for w in rec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = D.compare_models(models, x, num_samples=200, rank_by="ais", ais_subset=8,
                              ais_options={"num_steps": 200, "num_chains": 8, "seed": 0})
    assert df.attrs["rank_by"] == "ais" and df.attrs["certified"] and df.attrs["num_data"] == 8
    assert list(df.index)[0] == "true, narrow guide" and set(df["method"]) == {"ais"}
    # AIS from the narrow guide is far closer to the closed-form log p(x) than IS from it, and below it
    exact = float(truth.log_marginal(x[:8]).sum())
    is_error = (float(is_df.loc["true, narrow guide", "elpd"]) - float(truth.log_marginal(x).sum())) * 8 / 12
    ais_error = float(df.loc["true, narrow guide", "elpd"]) - exact
    assert -0.4 * 8 < ais_error < 0.1 and abs(ais_error) < 0.5 * abs(is_error), (ais_error, is_error)
    with pytest.raises(ValueError, match="rank_by must be"):
        D.compare_models(models, x, rank_by="bdmc")
    with pytest.raises(ValueError, match="apply to rank_by='ais' only"):
        D.compare_models(models, x, ais_subset=5)


# ---------------------------------------------------------------------------------------------
# diagnose --ais-subset
# ---------------------------------------------------------------------------------------------
def test_diagnose_shows_the_is_bias_beside_khat(trained_run, capsys):
    from pyro_vae.cli import diagnose

    assert diagnose.main([str(trained_run), "--samples", "100", "--num-points", "6", "--gap-steps", "0",
                          "--sbc-simulations", "0", "--ais-subset", "3", "--ais-steps", "20", "--ais-chains", "4",
                          "--no-progress"]) == 0
    assert "IS bias (AIS − IS) on 3 digits" in capsys.readouterr().out
    out = trained_run / "diagnostics"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ais_num_points"] == 3 and math.isfinite(summary["ais_minus_is"])
    report = (out / "report.md").read_text()
    assert "### Importance sampling's bias per datapoint (AIS − IS)" in report
    assert "| datapoint | k̂ | IS ESS | log p(x), IS | log p(x), AIS |" in report
    assert "ais_vs_is.png" in summary["figures"]
    _png(out / "ais_vs_is.png")
    # the default stays fast: no AIS
    assert diagnose.main([str(trained_run), "--samples", "50", "--num-points", "4", "--gap-steps", "0",
                          "--sbc-simulations", "0", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["ais_num_points"] == 0
    assert "not computed (--ais-subset N)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--ais-subset must be >= 0"):
        diagnose.main([str(trained_run), "--ais-subset", "-1"])
    with pytest.raises(ConfigError, match="--ais-steps must be >= 2"):
        diagnose.main([str(trained_run), "--ais-subset", "2", "--ais-steps", "1"])
