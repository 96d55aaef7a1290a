"""DDP step-time overhead against single-process training on the same machine.

Three ways to train the default model (784-400-50 Bernoulli VAE, ELBO, Adam) on the embedded
MNIST digits, each process taking minibatches of ``--batch-size`` rows:

* ``fit``: the single-process loop, :func:`pyro_vae.train.train_step` over
  :class:`pyro_vae.data.Batches` (what :func:`pyro_vae.fit` runs);
* ``lightning-1``: :func:`pyro_vae.train.lightning.fit_distributed` with one process;
* ``ddp-P``: the same with ``--devices`` processes (DDP, gloo on CPUs): every step also
  all-reduces the gradients, so per process the work is the same as ``fit``'s;
* ``fit-batch-PB``: the single-process loop with P·batch rows a step, the same global batch as
  ``ddp-P`` (its step time over DDP's is the speed-up DDP buys on this machine).

One step is timed from the start of its forward pass to the end of its optimizer step; the
first ``--warmup`` steps of every run are dropped. The modes are interleaved (one run of each per
round, the order alternating between rounds) so that load from other users of the machine hits
them alike, and the reported overhead is the median over rounds of each round's ratio of median
step times. Every process gets ``--threads`` threads (default 1; with P processes on a machine of
C cores, P·threads ≤ C keeps them from competing for cores).

A ratio of 1.0 means DDP costs nothing per step; the throughput of P processes is then P times
one process's (P·batch rows per step).

Usage::

    python -m benchmarks.ddp_overhead --rounds 5 --devices 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from pyro_vae.build import build_objective, build_vae
from pyro_vae.config import load_config
from pyro_vae.data import Batches, load_dataset
from pyro_vae.train import train_step
from pyro_vae.train.fit import make_optimizer

try:
    import lightning as L

    from pyro_vae.train.lightning import fit_distributed
except ImportError as e:  # pragma: no cover
    raise SystemExit(f"this benchmark needs Lightning: pip install 'pyro_vae[scale]' ({e})") from e


class StepTimer(L.Callback):
    """Records every training step's wall time in rank 0 and writes them to ``path`` (JSON)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:  # noqa: D102
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:  # noqa: D102
        self.times.append(time.perf_counter() - self._t0)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:  # noqa: D102
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(self.times))


def _setup(batch_size: int, seed: int) -> tuple[Any, Any, torch.Tensor]:
    config = load_config(None, {"batch_size": batch_size, "seed": seed})
    data = load_dataset(config.dataset, seed=seed)
    vae = build_vae(config, data.x_dim, data.image_shape, data.train)
    return vae, build_objective(config), data.train


def time_fit(batch_size: int, steps: int, seed: int = 0) -> list[float]:
    """Step times of the single-process loop (``train_step`` over ``Batches``)."""
    vae, objective, train = _setup(batch_size, seed)
    params = list(vae.parameters())
    opt = make_optimizer("adam", params, 1e-3, 0.0)
    batches = Batches(train, batch_size, dynamic_binarization=True, generator=torch.Generator().manual_seed(seed))
    loss_fn = lambda x, num_data: objective.differentiable_loss(vae.model, vae.guide, x, num_data=num_data)  # noqa: E731
    times: list[float] = []
    vae.train()
    while len(times) < steps:
        for _, xb in batches:
            t0 = time.perf_counter()
            train_step(loss_fn, params, opt, (xb,), {"num_data": batches.num_data}, batches.num_data)
            times.append(time.perf_counter() - t0)
            if len(times) == steps:
                break
    return times


def time_lightning(batch_size: int, steps: int, devices: int, strategy: str, seed: int = 0) -> list[float]:
    """Step times of :func:`fit_distributed` (rank 0's) with ``devices`` processes."""
    vae, objective, train = _setup(batch_size, seed)
    per_epoch = -(-train.shape[0] // (batch_size * devices))
    epochs = -(-steps // per_epoch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "times.json")
        fit_distributed(
            vae, objective, train, epochs=epochs, batch_size=batch_size, dynamic_binarization=True, seed=seed,
            accelerator="cpu", devices=devices, strategy=strategy if devices > 1 else "auto", progress=False,
            tensorboard=False, trainer_options={"callbacks": [StepTimer(path)], "max_steps": steps},
        )
        return json.loads(Path(path).read_text())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the interleaved benchmark; print the table and return the numbers (``ratio`` = DDP / fit)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.ddp_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one run of each mode per round)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per run (after --warmup)")
    p.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of each run")
    p.add_argument("--batch-size", type=int, default=128, help="rows per process and step")
    p.add_argument("--devices", type=int, default=2, help="DDP processes")
    p.add_argument("--strategy", default="ddp_fork", help="ddp_fork (fast start) or ddp_spawn; both are DDP")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    ns = p.parse_args(list(argv) if argv is not None else None)
    if min(ns.rounds, ns.steps, ns.batch_size, ns.threads) < 1 or ns.devices < 2 or ns.warmup < 0:
        raise SystemExit("--rounds, --steps, --batch-size, --threads must be >= 1, --devices >= 2, --warmup >= 0")
    threads_before = torch.get_num_threads()
    omp_before = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(ns.threads)
    os.environ["OMP_NUM_THREADS"] = str(ns.threads)  # what Lightning gives each DDP process
    ddp = f"ddp-{ns.devices}"
    glob = f"fit-batch-{ns.devices * ns.batch_size}"
    modes = {
        "fit": lambda: time_fit(ns.batch_size, ns.warmup + ns.steps),
        glob: lambda: time_fit(ns.devices * ns.batch_size, ns.warmup + ns.steps),
        "lightning-1": lambda: time_lightning(ns.batch_size, ns.warmup + ns.steps, 1, ns.strategy),
        ddp: lambda: time_lightning(ns.batch_size, ns.warmup + ns.steps, ns.devices, ns.strategy),
    }
    medians: dict[str, list[float]] = {m: [] for m in modes}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        for r in range(ns.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for m in order:
                times = modes[m]()[ns.warmup:]
                medians[m].append(statistics.median(times))
    finally:
        torch.set_num_threads(threads_before)
        if omp_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp_before
    ratio = statistics.median(d / f for d, f in zip(medians[ddp], medians["fit"]))
    ratio_l1 = statistics.median(lt / f for lt, f in zip(medians["lightning-1"], medians["fit"]))
    speedup = statistics.median(g / d for g, d in zip(medians[glob], medians[ddp]))
    result = {
        "ratio": ratio,  # DDP step time / single-process (fit) step time, interleaved median
        "ratio_lightning_1": ratio_l1,  # Lightning with one process / fit
        "speedup_same_global_batch": speedup,  # fit with batch P*B / DDP with P x B (both P*B rows a step)
        "load_average_before": load_before,
        "median_step_ms": {m: 1e3 * statistics.median(v) for m, v in medians.items()},
        "per_round_step_ms": {m: [round(1e3 * x, 3) for x in v] for m, v in medians.items()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "lightning": L.__version__},
    }
    print(f"step time, median over {ns.rounds} interleaved rounds ({ns.steps} steps each, batch {ns.batch_size} "
          f"per process, {ns.threads} thread(s) per process):")
    for m, v in result["median_step_ms"].items():
        print(f"  {m:12s} {v:8.2f} ms")
    print(f"DDP overhead ({ddp} / fit): {ratio:.3f}x per step;  Lightning one process / fit: {ratio_l1:.3f}x")
    print(f"speed-up at the same global batch ({glob} / {ddp}): {speedup:.3f}x  "
          f"(machine load average at the start: {load_before:.2f} on {os.cpu_count()} CPUs)")
    if ns.out is not None:
        ns.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
