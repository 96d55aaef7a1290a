"""pv.compare_objectives (pyro_vae.experiments): the per-objective comparison, the gradient-SNR estimator
(pyro_vae.diagnostics.snr), outputs, CLI, input errors, and the pyro_vae.comparison compatibility module."""

import csv
import importlib
import math

import pytest
import torch

from pyro_vae.build import build_objective, build_vae
from pyro_vae.cli.compare import main as cli_main
from pyro_vae.cli.compare import parse_objectives
from pyro_vae.config import ConfigError, load_config
from pyro_vae.diagnostics import snr as S
from pyro_vae.experiments import result as R
from pyro_vae.runs import eval_data, load_data
from pyro_vae.train import fit

# the harness module (``pyro_vae.experiments.compare``; the package exports its function, not it)
C = importlib.import_module("pyro_vae.experiments.compare")

TINY = {"hidden": [16], "latent_dim": 3, "epochs": 1}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models are dominated by thread start-up / spin-waits on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    return load_data(load_config(None, TINY))


@pytest.fixture(scope="module")
def outcome(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = C.compare_objectives(
        ["elbo", "iwae", "dreg"], TINY, num_particles=4, data=data, train_limit=300, eval_samples=10, khat_samples=100,
        val_samples=2, snr_repeats=4, snr_ks=(1, 4), memory=True, memory_steps=2, out_dir=out, progress=False,
    )
    return result, out


def test_rows_are_complete_and_finite(outcome):
    result, _ = outcome
    assert [r["objective"] for r in result.table] == ["elbo", "iwae", "dreg"]
    assert [r["num_particles"] for r in result.table] == [1, 4, 4]  # num_particles skips the ELBO
    for row in result.table:
        assert set(row) == set(R.COLUMNS)
        for key in R._NUMERIC:
            assert math.isfinite(float(row[key])), (row["objective"], key, row[key])
        assert row["steps"] == 3  # 300 rows, batch 128
        assert 0 <= row["active_units"] <= 3
        assert 0.0 <= row["khat_over_0_7"] <= 1.0 and row["khat_median"] < 5.0
        assert row["snr_encoder"] > 0 and row["snr_decoder"] > 0
        assert row["seconds_per_step"] > 0 and row["peak_memory_mb"] >= 0
        assert row["test_log_likelihood"] < 0 and row["test_log_likelihood_se"] > 0
        assert row["memory_method"].startswith("cpu:")
    assert len(result.curves["iwae"]) == 1 and math.isfinite(result.curves["iwae"][0]["val_bound"])


def test_paired_differences(outcome):
    result, _ = outcome
    base = torch.tensor(result.log_likelihoods["elbo"], dtype=torch.float64)
    assert base.numel() == 500  # every test digit, in order
    first = result.table[0]
    assert first["delta_log_likelihood"] == 0.0 and first["delta_log_likelihood_se"] == 0.0
    for row in result.table[1:]:
        ll = torch.tensor(result.log_likelihoods[row["objective"]], dtype=torch.float64)
        assert ll.mean().item() == pytest.approx(row["test_log_likelihood"], abs=1e-4)
        d = ll - base
        assert row["delta_log_likelihood"] == pytest.approx(row["test_log_likelihood"] - first["test_log_likelihood"],
                                                            abs=1e-4)
        se = math.sqrt(sum((v - d.mean().item()) ** 2 for v in d.tolist()) / (len(d) - 1) / len(d))
        assert row["delta_log_likelihood_se"] == pytest.approx(se, rel=1e-9)
        # the digits' shared difficulty cancels: the paired SE is far below either run's own SE
        assert row["delta_log_likelihood_se"] < 0.5 * min(row["test_log_likelihood_se"], first["test_log_likelihood_se"])
    md = result.to_markdown()
    assert "Δ vs elbo" in md and f"{result.table[1]['delta_log_likelihood']:+.2f} ±" in md


def test_khat_columns_agree_with_a_fresh_importance_diagnosis(outcome, data):
    from pyro_vae.diagnostics import importance_diagnostics

    result, _ = outcome
    test = eval_data(data, load_config(None, TINY))
    torch.manual_seed(123)  # other draws than compare's: the medians agree up to Monte Carlo error
    for row in result.table:
        khat = importance_diagnostics(result.models[row["objective"]], test, num_samples=100).khat
        assert abs(float(khat.median()) - row["khat_median"]) < 0.1
        assert abs(float((khat > 0.7).double().mean()) - row["khat_over_0_7"]) < 0.1
    assert result.settings["khat_samples"] == 100
    assert "k̂ median (> 0.7)" in result.to_markdown()


def test_active_units_match_direct_count(outcome, data):
    result, _ = outcome
    test = eval_data(data, load_config(None, TINY))
    for row in result.table:
        vae = result.models[row["objective"]]
        means = vae.encode(test).double()
        assert row["active_units"] == int((means.var(0) > C.ACTIVE_UNIT_THRESHOLD).sum())
    assert "latent_diagnostics" in result.settings["active_units"]
    # a non-degenerate case: sharpen the encoder so its means move with x, then freeze them
    vae = build_vae(load_config(None, TINY), data.x_dim)
    last = vae.encoder.net[-1]
    with torch.no_grad():
        last.weight.mul_(30.0)
    means = vae.encode(test).double()
    expected = int((means.var(0) > C.ACTIVE_UNIT_THRESHOLD).sum())
    assert expected > 0 and C._active_units(vae, test) == expected
    with torch.no_grad():
        last.weight.zero_()
    assert C._active_units(vae, test) == 0


def test_snr_against_k(outcome):
    result, _ = outcome
    assert [(r["K"], r["estimator"]) for r in result.snr_curve] == [
        (1, "standard"), (1, "dreg"), (4, "standard"), (4, "dreg")]
    for r in result.snr_curve:
        assert math.isfinite(r["snr_encoder"]) and r["snr_encoder"] > 0
        assert math.isfinite(r["snr_decoder"]) and r["snr_decoder"] > 0
    # same particles for both estimators, and DReG's decoder gradient is the standard one
    for k in (1, 4):
        std, dreg = (r for r in result.snr_curve if r["K"] == k)
        assert dreg["snr_decoder"] == pytest.approx(std["snr_decoder"], rel=1e-5)


def test_outputs_written(outcome):
    result, out = outcome
    names = {p.name for p in out.iterdir()}
    assert {"table.md", "table.csv", "result.json", "loglik_vs_time.png", "snr_vs_k.png"} <= names
    md = (out / "table.md").read_text()
    assert md == result.to_markdown()
    assert all(f"| {label} |" in md for label in ("elbo", "iwae", "dreg"))
    assert "| 4 | dreg |" in md
    with open(out / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["objective"] for r in rows] == ["elbo", "iwae", "dreg"]
    assert list(rows[0]) == list(R.COLUMNS)
    assert float(rows[1]["test_log_likelihood"]) == pytest.approx(result.table[1]["test_log_likelihood"])
    again = R.ComparisonResult.from_json(out / "result.json")
    assert again.log_likelihoods == result.log_likelihoods and again.to_markdown() == md


def test_snr_of_known_gradient_distribution():
    # loss = ½‖θ − c‖² + ⟨σ ⊙ ε, θ⟩ with ε ~ N(0, I): gradient at θ = 0 is −c + σ ε, SNR_i = |c_i| / σ_i
    c = torch.tensor([1.0, 2.0, -3.0, 0.5])
    sigma = torch.tensor([1.0, 4.0, 0.5, 0.25])
    theta = torch.zeros(4, requires_grad=True)
    gen = torch.Generator().manual_seed(0)

    def loss():
        return 0.5 * ((theta - c) ** 2).sum() + (sigma * torch.randn(4, generator=gen) * theta).sum()

    snr = S.gradient_snr(loss, {"theta": [theta]}, repeats=4000)["theta"]
    assert snr == pytest.approx(float((c.abs() / sigma).mean()), rel=0.05)  # (1 + 0.5 + 6 + 2) / 4
    assert theta.grad is None  # nothing accumulated or updated


def test_moments_match_direct_computation():
    gen = torch.Generator().manual_seed(1)
    samples = [[torch.randn(3, 2, generator=gen) + 1.0, torch.randn(5, generator=gen) * 3] for _ in range(7)]
    m = S.GradientMoments()
    for s in samples:
        m.add(s)
    flat = torch.stack([torch.cat([t.reshape(-1) for t in s]) for s in samples]).double()
    direct = flat.mean(0).abs() / flat.std(0, unbiased=True)
    torch.testing.assert_close(m.snr(), direct, rtol=1e-10, atol=0)
    assert S.summarize_snr(m.snr()) == pytest.approx(float(direct.mean()), rel=1e-12)
    # an element that never varies is left out of the mean rather than counted as infinite
    m2 = S.GradientMoments()
    for s in samples:
        m2.add([s[0], torch.ones(1)])
    assert S.summarize_snr(m2.snr()) == pytest.approx(float(direct[:6].mean()), rel=1e-12)


def test_training_matches_fit(data):
    """compare's timed loop takes the same steps as fit(val=None) with the same seed."""
    res = C.compare_objectives(["elbo"], TINY, data=data, train_limit=300, eval_samples=2, val_samples=None, snr_repeats=2,
                    snr_ks=(), memory=False, progress=False)
    cfg = load_config(None, TINY)
    vae = build_vae(cfg, data.x_dim, data.image_shape, data.train[:300])
    h = fit(vae, build_objective(cfg), data.train[:300], epochs=1, batch_size=cfg.batch_size, dynamic_binarization=True,
            seed=cfg.seed, progress=False, tensorboard=False)
    assert res.curves["elbo"][0]["train_bound"] == pytest.approx(h.epochs[0]["train_elbo"], rel=1e-6)


@pytest.fixture()
def no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(C, "_train", boom)
    monkeypatch.setattr(C, "build_vae", boom)


def test_unknown_objective_lists_valid_ones(no_training):
    with pytest.raises(ConfigError, match="unknown objective 'vae'.*elbo, iwae, iwae_stl, dreg, renyi, miwae"):
        C.compare_objectives(["elbo", "vae"], TINY, progress=False)
    with pytest.raises(ConfigError, match="unknown objective 'nope'"):
        C.compare_objectives({"mine": {"objective": "nope"}}, TINY, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"snr_repeats": 1}, "snr_repeats must be an integer >= 2"),
        ({"eval_samples": 0}, "eval_samples must be"),
        ({"snr_ks": (1, 0)}, "snr_ks"),
        ({"snr_at": "dreg"}, "snr_at = 'dreg' is not one of"),
        ({"snr_data": "both"}, "snr_data must be"),
        ({"khat_samples": 10}, "khat_samples must be an integer >= 25"),
    ],
)
def test_bad_options_raise_before_training(no_training, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        C.compare_objectives(["elbo", "iwae"], TINY, progress=False, **kwargs)


def test_bad_config_and_labels(no_training):
    with pytest.raises(ConfigError, match="objective 'iwae'.*latent_dim"):
        C.compare_objectives({"iwae": {"latent_dim": 0}}, TINY, progress=False)
    with pytest.raises(ConfigError, match="list of names"):
        C.compare_objectives("elbo", TINY, progress=False)
    with pytest.raises(ConfigError, match="shares seed"):
        C.compare_objectives({"elbo": {}, "iwae": {"seed": 3}}, TINY, progress=False)
    with pytest.raises(ConfigError, match="patience = 3 is not supported"):
        C.compare_objectives(["elbo"], {**TINY, "patience": 3}, progress=False)
    with pytest.raises(ValueError, match="repeats must be an integer >= 2"):
        S.gradient_snr(lambda: torch.zeros(()), {}, repeats=1)


def test_cli(tmp_path, capsys):
    assert parse_objectives("elbo, iwae:5,dreg") == {
        "elbo": {"objective": "elbo"}, "iwae-5": {"objective": "iwae", "num_particles": 5}, "dreg": {"objective": "dreg"}}
    assert cli_main(["--objectives", "elbo,bogus", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown objective 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    from pyro_vae.cli import main as pyro_vae_main  # the subcommand as wired into `pyro-vae`

    assert pyro_vae_main(["compare", "--objectives", "elbo", "--snr-repeats", "1", "--out", str(tmp_path / "b")]) == 2
    assert "snr_repeats must be an integer >= 2" in capsys.readouterr().err
    out = tmp_path / "run"
    code = cli_main(["--objectives", "elbo,iwae:2", "--epochs", "1", "--hidden", "16", "--latent-dim", "3",
                     "--train-limit", "128", "--eval-samples", "3", "--val-samples", "0", "--snr-repeats", "2",
                     "--snr-ks", "none", "--no-memory", "--no-progress", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| iwae-2 | 2 |" in printed
    assert (out / "table.md").exists() and (out / "table.csv").exists() and (out / "loglik_vs_time.png").exists()
    assert not (out / "snr_vs_k.png").exists()


def test_old_import_paths_still_work(outcome, data):
    """pyro_vae.comparison re-exports the moved names: the same objects, old call signatures."""
    import pyro_vae as pv
    import pyro_vae.comparison as old
    from pyro_vae import diagnostics

    assert pv.compare is pv.compare_objectives is old.compare is old.compare_objectives is C.compare_objectives
    assert old.ComparisonResult is R.ComparisonResult and old.COLUMNS is R.COLUMNS
    for name in ("gradient_snr", "gradient_moments", "vae_gradient_snr", "GradientMoments", "summarize_snr"):
        assert getattr(old, name) is getattr(diagnostics, name) is getattr(S, name), name
    assert callable(diagnostics.compare_models)  # the model comparison of diagnostics is another thing, kept
    result, _ = outcome
    test = eval_data(data, load_config(None, TINY))
    row = result.table[0]
    n, how = old.active_units(result.models[row["objective"]], test)
    assert n == row["active_units"] and "latent_diagnostics" in how
    # results pickled under the old module path load (the class is found by its old name)
    import pickle

    blob = pickle.dumps(R.ComparisonResult(result.table), protocol=0)  # protocol 0: module names as text lines
    blob = blob.replace(b"pyro_vae.experiments.result\n", b"pyro_vae.comparison\n")
    assert b"pyro_vae.comparison" in blob and pickle.loads(blob).table == result.table
