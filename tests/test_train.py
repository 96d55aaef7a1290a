"""Trainer: exact resume, seeding, atomic and safe checkpoints, bad input, early stopping."""

from __future__ import annotations

import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae as pv
from pyro_vae.data import DataError
from pyro_vae.train import CheckpointError, StepInfo, evaluate_bound, load_checkpoint, save_checkpoint, train_step
from pyro_vae.train.fit import collect_parameters


def tiny_vae(x_dim: int = 20, latent: int = 3) -> pv.VAE:
    torch.manual_seed(0)
    return pv.VAE(
        pv.encoders.DiagNormalEncoder(x_dim, latent, hidden=(16,)),
        pv.decoders.BernoulliDecoder(latent, x_dim, hidden=(16,)),
    )


@pytest.fixture
def grey():
    g = torch.Generator().manual_seed(3)
    return torch.rand(200, 20, generator=g), torch.rand(50, 20, generator=g)


def _fit(vae, grey, run_dir, epochs, **kw):
    train, val = grey
    return pv.fit(vae, train=train, val=val, epochs=epochs, batch_size=32, dynamic_binarization=True,
                  seed=5, run_dir=run_dir, progress=False, **kw)


@pytest.mark.parametrize("schedule", [None, "step", "cosine"])
def test_resume_after_an_interruption_gives_the_same_numbers(tmp_path, grey, schedule):
    full = tiny_vae()
    h_full = _fit(full, grey, tmp_path / "full", 4, lr_schedule=schedule)
    part = tiny_vae()
    # interrupt after epoch 2 by raising from a callback: the checkpoint of epoch 2 is on disk
    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(part, grey, tmp_path / "part", 4, lr_schedule=schedule, callbacks=[stop])
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["epoch"] == 2
    again = tiny_vae()
    h_res = _fit(again, grey, tmp_path / "part", 4, lr_schedule=schedule, resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert [r["val_elbo"] for r in h_res.epochs] == [r["val_elbo"] for r in h_full.epochs]
    assert [r["lr"] for r in h_res.epochs] == [r["lr"] for r in h_full.epochs]


def test_same_seed_same_numbers_other_seed_other_numbers(grey):
    train, val = grey
    runs = []
    for seed in (1, 1, 2):
        vae = tiny_vae()
        h = pv.fit(vae, train=train, val=val, epochs=2, batch_size=32, dynamic_binarization=True, seed=seed, progress=False)
        runs.append(h.column("val_elbo"))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_metrics_csv_matches_history(tmp_path, grey):
    vae = tiny_vae()
    h = _fit(vae, grey, tmp_path / "m", 3)
    lines = (tmp_path / "m" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert {"epoch", "train_loss", "val_elbo", "kl", "reconstruction", "items_per_s", "lr"} <= set(header)
    assert len(lines) == 4
    row = dict(zip(header, lines[-1].split(",")))
    assert float(row["val_elbo"]) == pytest.approx(h.epochs[-1]["val_elbo"])
    # the running train ELBO splits into reconstruction - KL
    last = h.epochs[-1]
    assert last["train_elbo"] == pytest.approx(last["reconstruction"] - last["kl"], rel=1e-5)
    assert h.kl_sites == {"z": "analytic"}


def test_existing_run_is_not_overwritten(tmp_path, grey):
    vae = tiny_vae()
    _fit(vae, grey, tmp_path / "r", 1)
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True"):
        _fit(tiny_vae(), grey, tmp_path / "r", 1)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x: torch.full_like(x, float("nan")), "NaN"),
        (lambda x: x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill(0, torch.tensor([3]), True), float("inf")), "inf"),
        (lambda x: x[:0], "empty|0 rows|no rows"),
        (lambda x: x[:, :7], "x_dim|features"),
        (lambda x: x.reshape(10, 20, 20), "dimension|ndim|2-D|flatten"),
    ],
)
def test_bad_training_data_is_refused_before_anything_is_written(tmp_path, grey, make, match):
    train, val = grey
    bad = make(train.clone())
    with pytest.raises(DataError, match=match):
        pv.fit(tiny_vae(), train=bad, val=val, epochs=1, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bernoulli_on_grey_pixels_names_the_fixes(tmp_path, grey):
    train, val = grey
    with pytest.raises(DataError, match="binarize.*continuous"):
        pv.fit(tiny_vae(), train=train, val=val, epochs=1, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_arguments(grey):
    train, val = grey
    for kw, match in [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": -1.0}, "lr"),
                      ({"patience": 2, "val": None}, "validation")]:
        args = {"train": train, "val": val, "epochs": 1, "dynamic_binarization": True, "progress": False}
        args.update(kw)
        with pytest.raises(ValueError, match=match):
            pv.fit(tiny_vae(), **args)


def test_early_stopping_restores_the_best_weights(grey):
    train, val = grey
    vae = tiny_vae()
    seen = {}

    def remember(epoch, row):
        seen[epoch] = row["val_elbo"]

    h = pv.fit(vae, train=train, val=val, epochs=30, batch_size=32, lr=1e-9, patience=1,
               dynamic_binarization=True, progress=False, callbacks=[remember])
    assert h.stopped_early and len(h.epochs) < 30
    assert h.best_val == max(seen.values())
    assert h.best_epoch == max(seen, key=seen.get)


def test_atomic_checkpoint_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.ones(3)}})
    good = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(3)}})
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temp file left
    assert load_checkpoint(path)["epoch"] == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_corrupt_foreign_and_unsafe_checkpoints_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(corrupt)
    truncated = tmp_path / "trunc.pt"
    save_checkpoint(truncated, {"model": {"w": torch.ones(100)}})
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a pyro_vae checkpoint"):
        load_checkpoint(foreign)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "pyro_vae-checkpoint", "version": 1, "x": _Evil()}, unsafe)
    with pytest.raises(CheckpointError, match="safe loading refuses"):
        load_checkpoint(unsafe)  # weights_only=True: the stored os.system call never runs
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_train_step_clips_the_gradient_norm():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    info = train_step(lambda: 10 * (w**2).sum(), [w], opt, (), {}, num_data=1, grad_clip=0.5)
    assert info.grad_norm == pytest.approx(100.0)  # |20 w| = 20 * 5 before clipping
    assert torch.linalg.vector_norm(w.detach() - torch.tensor([3.0, 4.0])) == pytest.approx(0.5)


def test_train_step_refuses_a_non_finite_loss():
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=1.0)
    with pytest.raises(FloatingPointError, match="learning rate"):
        train_step(lambda: w.sum() * float("nan"), [w], opt, (), {}, num_data=1)


def test_fit_trains_a_hand_written_pair_with_global_params():
    """A user's own model/guide (pyro.param in the global store, no VAE class) trains."""
    data = torch.randn(64, 2) + torch.tensor([1.0, -2.0])

    def model(x, num_data=None):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(loc + z, 0.5).to_event(1), obs=x)

    def guide(x, num_data=None):
        w = pyro.param("w", torch.zeros(()))
        c = pyro.param("c", torch.zeros(2))
        s = pyro.param("s", torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(w * x + c, s).to_event(1))  # can express the exact posterior

    params = collect_parameters(model, guide, (data[:8],), {"num_data": 64})
    assert len(params) == 4
    h = pv.fit(model, pv.objectives.ELBO(), data, guide=guide, epochs=100, batch_size=16, lr=0.05, progress=False)
    # with a guide family holding the exact posterior, the ELBO's optimum in loc is the MLE: the data mean
    assert torch.allclose(pyro.param("loc").detach(), data.mean(0), atol=0.15)
    assert len(h.epochs) == 100


def test_fit_accepts_pyro_trace_elbo(grey):
    train, val = grey
    vae = tiny_vae()
    h = pv.fit(vae, pyro.infer.Trace_ELBO(), train, val, epochs=1, dynamic_binarization=True, progress=False)
    assert math.isfinite(h.epochs[-1]["train_loss"]) and math.isnan(h.epochs[-1]["kl"])


def test_resume_continues_a_kl_warmup_where_it_stopped(tmp_path, grey):
    train, val = grey

    def run(epochs, resume=False):
        obj = pv.objectives.KLWarmup(pv.objectives.ELBO(), warmup_steps=100)
        pv.fit(tiny_vae(), obj, train, val, epochs=epochs, batch_size=32, dynamic_binarization=True, seed=5,
               run_dir=tmp_path / "w", resume=resume, overwrite=not resume, progress=False)
        return obj

    assert run(2).step == 14  # 7 steps per epoch
    assert load_checkpoint(tmp_path / "w" / "checkpoint.pt")["objective_step"] == 14
    assert run(3, resume=True).step == 21


def test_on_step_gets_every_step_and_its_wall_time(grey):
    train, _ = grey
    calls = []
    h = pv.fit(tiny_vae(), train=train, epochs=2, batch_size=32, dynamic_binarization=True, progress=False,
               on_step=lambda info, seconds: calls.append((info, seconds)))
    assert len(calls) == 2 * 7  # 200 rows in batches of 32: 7 steps an epoch
    assert all(isinstance(info, StepInfo) and 0 < seconds < h.epochs[0]["seconds"] for info, seconds in calls)
    # the steps' own losses: weighted by their batch sizes they make the epoch's train_loss
    sizes = [32] * 6 + [8]
    for epoch in range(2):
        infos = [info for info, _ in calls[7 * epoch : 7 * (epoch + 1)]]
        mean = sum(i.loss * b for i, b in zip(infos, sizes)) / 200
        assert mean == pytest.approx(h.epochs[epoch]["train_loss"], rel=1e-12)
    assert sum(s for _, s in calls[:7]) <= h.epochs[0]["seconds"]


@pytest.mark.parametrize("k", [None, 7])
def test_val_objective_is_the_bound_validation_reports(grey, k):
    """fit validates right after the epoch's last step, drawing from torch's global generator: the
    generator state at the last on_step call reproduces its validation number with evaluate_bound."""
    train, val = grey
    states = []
    vae = tiny_vae()
    objective = pv.objectives.IWAE(num_particles=k) if k else None
    h = pv.fit(vae, train=train, val=val, epochs=1, batch_size=32, dynamic_binarization=True, seed=5, progress=False,
               val_objective=objective, val_batch_size=16, on_step=lambda info, s: states.append(torch.get_rng_state()))
    x_val = torch.bernoulli(val, generator=torch.Generator().manual_seed(5 + 1))  # binarized once, as fit does
    torch.set_rng_state(states[-1])
    expected = evaluate_bound(vae.model, vae.guide, x_val, objective=pv.objectives.IWAE(num_particles=k) if k else None,
                              batch_size=16)
    assert h.epochs[0]["val_elbo"] == expected
    assert h.best_val == expected


def test_val_batch_size_is_checked(grey):
    train, val = grey
    with pytest.raises(ValueError, match="val_batch_size"):
        pv.fit(tiny_vae(), train=train, val=val, epochs=1, dynamic_binarization=True, val_batch_size=0, progress=False)


@pytest.mark.parametrize("kw, computed", [({}, False), ({"log_grad_norm": True}, True), ({"grad_clip": 1e3}, True)])
def test_the_gradient_norm_is_computed_only_when_clipping_or_asked(grey, monkeypatch, kw, computed):
    train, _ = grey
    calls = []
    norm = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or norm(*a, **k))
    h = pv.fit(tiny_vae(), train=train, epochs=2, batch_size=32, dynamic_binarization=True, progress=False, **kw)
    assert len(calls) == (2 * 7 if computed else 0)
    assert all(math.isfinite(g) == computed for g in h.column("grad_norm"))


def test_the_checkpoint_dictionary_keeps_its_format(tmp_path, grey):
    """Checkpoints written before the run state was shared still load: the keys have not changed."""
    _fit(tiny_vae(), grey, tmp_path / "r", 1, patience=3)
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert set(state) == {"format", "version", "epoch", "model", "optimizer", "scheduler", "rng", "history",
                          "best_epoch", "best_val", "epochs_since_best", "stopped_early", "kl_sites", "config"}
    assert set(state["rng"]) == {"torch", "data"}
    assert set(load_checkpoint(tmp_path / "r" / "best.pt")) == {"format", "version", "epoch", "model", "config"}


@pytest.mark.parametrize("kw, match", [
    ({"lr": float("inf")}, "lr must be a positive finite"),
    ({"lr": float("nan")}, "lr must be a positive finite"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite"),
    ({"grad_clip": float("nan")}, "grad_clip must be a positive finite"),
    ({"grad_clip": float("inf")}, "grad_clip must be a positive finite"),
    ({"resume": True, "overwrite": True}, "contradict"),
])
def test_non_finite_and_contradictory_arguments_are_refused_before_writing(tmp_path, grey, kw, match):
    train, val = grey
    with pytest.raises(ValueError, match=match):
        pv.fit(tiny_vae(), train=train, val=val, epochs=1, dynamic_binarization=True, progress=False,
               run_dir=tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists()


def test_train_step_stops_at_non_finite_weights():
    x = torch.bernoulli(torch.full((8, 20), 0.5))
    vae = tiny_vae()
    params = collect_parameters(vae.model, vae.guide, (x,), {"num_data": 8})
    opt = torch.optim.SGD(params, lr=1.0)
    params[0].register_hook(lambda g: g * float("inf"))
    loss_fn = lambda *a, **k: pv.objectives.ELBO().differentiable_loss(vae.model, vae.guide, *a, **k)  # noqa: E731
    with pytest.raises(FloatingPointError, match="weights became nan.*lower the learning rate"):
        train_step(loss_fn, params, opt, (x,), {"num_data": 8}, 8)


def test_the_run_lock_is_reentrant_and_excludes_other_processes(tmp_path):
    import subprocess
    import sys

    from pyro_vae.train.state import LOCK, RunInUseError, run_lock

    run = tmp_path / "run"
    with run_lock(run), run_lock(run):  # fit under train_run takes it twice
        assert (run / LOCK).read_text().strip() == str(os.getpid())
        code = ("import sys; from pyro_vae.train.state import run_lock, RunInUseError\n"
                f"try:\n    run_lock({str(run)!r}).__enter__()\nexcept RunInUseError as e:\n    print(e); sys.exit(3)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert res.returncode == 3 and f"PID {os.getpid()}" in res.stdout
    with run_lock(run):  # released
        pass
    assert RunInUseError.__mro__[1] is RuntimeError
