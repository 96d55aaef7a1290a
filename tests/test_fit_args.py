"""Per-datapoint arguments besides x in fit and the Lightning module (issue 11, observation 3).

The program checks that every row of its per-datapoint argument belongs to the same row of x
(x carries its own row id in column 0), so any mis-slicing — a shuffle applied to x only, a
validation chunk paired with training rows — fails inside the program.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae as pv

pytestmark = pytest.mark.filterwarnings("ignore:model/guide do not take a num_data keyword")


class CVAE(nn.Module):
    """model(x, ys): a conditional VAE that refuses rows of ys that do not belong to x."""

    def __init__(self, d: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.enc = nn.Linear(d + classes, 4)
        self.dec = nn.Linear(2 + classes, d)
        self.classes = classes

    def _check(self, x, ys):
        assert x.shape[0] == ys.shape[0], (x.shape, ys.shape)
        assert torch.equal(x[:, 0].round().long() % self.classes, ys), "ys rows do not belong to x rows"

    def model(self, x, ys):
        self._check(x, ys)
        pyro.module("cvae", self)
        c = nn.functional.one_hot(ys, self.classes).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc = self.dec(torch.cat([z, c.expand(z.shape[:-1] + c.shape[-1:])], -1))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x, ys):
        self._check(x, ys)
        pyro.module("cvae", self)
        c = nn.functional.one_hot(ys, self.classes).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(torch.cat([x, c], -1))
            pyro.sample("z", dist.Normal(h[..., :2], nn.functional.softplus(h[..., 2:]) + 1e-3).to_event(1))


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n)
    x = torch.randn(n, 4, generator=g)
    x[:, 0] = ids.float()
    return x, ids % 3


def test_fit_slices_per_datapoint_arguments_with_every_shuffled_minibatch():
    m = CVAE()
    x, ys = _data(50)
    xv, yv = _data(20, seed=1)
    h = pv.fit(m.model, pv.objectives.ELBO(), x, xv, guide=m.guide, epochs=2, batch_size=8, progress=False,
               model_args=(ys,), val_args=(yv,), val_batch_size=7)
    assert len(h.epochs) == 2 and math.isfinite(h.epochs[-1]["val_elbo"])


def test_validation_bound_is_the_bound_of_the_paired_rows():
    """val_elbo equals an ELBO evaluated here on (xv, yv) row by row (many particles, in expectation)."""
    m = CVAE()
    x, ys = _data(30)
    xv, yv = _data(9, seed=2)
    h = pv.fit(m.model, pv.objectives.ELBO(), x, xv, guide=m.guide, epochs=1, batch_size=10, progress=False,
               model_args=(ys,), val_args=(yv,), val_batch_size=4,
               val_objective=pv.objectives.ELBO(num_particles=2000, analytic_kl=False))
    ref = -sum(pyro.infer.Trace_ELBO(num_particles=2000, vectorize_particles=True).loss(
        m.model, m.guide, xv[i:i + 1], yv[i:i + 1]) for i in range(9)) / 9
    assert h.epochs[-1]["val_elbo"] == pytest.approx(ref, abs=0.1)


def test_keyword_and_named_per_datapoint_arguments():
    m = CVAE()
    x, ys = _data(12)

    def model(x, ys=None):
        m.model(x, ys)

    def guide(x, ys=None):
        m.guide(x, ys)

    pv.fit(model, None, x, guide=guide, epochs=1, batch_size=5, progress=False, model_kwargs={"ys": ys})
    lst = ys.tolist()  # a list is per-datapoint only when named
    pv.fit(lambda x, ys: m.model(x, torch.as_tensor(ys)), None, x, guide=lambda x, ys: m.guide(x, torch.as_tensor(ys)),
           epochs=1, batch_size=12, progress=False, model_args=(lst,), per_datapoint=[0])


def test_bad_per_datapoint_arguments_are_refused_before_training(tmp_path):
    m = CVAE()
    x, ys = _data(12)
    xv, yv = _data(5, seed=1)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="val_args="):
        pv.fit(m.model, None, x, xv, guide=m.guide, model_args=(ys,), progress=False, run_dir=run)
    with pytest.raises(ValueError, match=r"val_args\[0\] has 4 rows but the validation data have 5"):
        pv.fit(m.model, None, x, xv, guide=m.guide, model_args=(ys,), val_args=(yv[:4],), progress=False, run_dir=run)
    with pytest.raises(ValueError, match="positional argument 0 after x is named per-datapoint but has length 11"):
        pv.fit(m.model, None, x, guide=m.guide, model_args=(ys[:11],), per_datapoint=[0], progress=False, run_dir=run)
    with pytest.raises(ValueError, match="num_data is passed by fit"):
        pv.fit(m.model, None, x, guide=m.guide, model_kwargs={"num_data": 3}, progress=False, run_dir=run)
    assert not run.exists()  # nothing written


def test_lightning_step_passes_the_rest_of_a_tuple_batch():
    L = pytest.importorskip("lightning")
    from pyro_vae.train.lightning import VAELightningModule

    m = CVAE()
    x, ys = _data(24)
    xv, yv = _data(6, seed=3)
    module = VAELightningModule(m.model, guide=m.guide, num_data=24, val=xv, val_args=(yv,), epochs=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, ys), batch_size=8, shuffle=True)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own notices (num_workers, ...)
        trainer.fit(module, loader)
    assert math.isfinite(module.history.epochs[-1]["val_elbo"])
