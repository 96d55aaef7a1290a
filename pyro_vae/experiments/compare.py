"""Compare objectives: the same model, data and seed trained once per objective, then measured.

:func:`compare_objectives` (``pv.compare_objectives``, also ``pv.compare``) trains one VAE per
objective (identical initial weights, data order and binarization stream: everything but the
objective is shared) and reports, per objective, the test log-likelihood, the test ELBO, active
units, the gradient signal-to-noise ratio of the encoder and decoder, seconds per step and peak
memory; then the encoder/decoder SNR against K for the standard IWAE gradient and DReG at one
trained model. ``pyro-vae compare`` is the CLI. The measurements come from the library:
:func:`pyro_vae.log_likelihood`, :func:`pyro_vae.diagnostics.vae_gradient_snr`,
:func:`pyro_vae.diagnostics.latent_diagnostics` (active units),
:func:`pyro_vae.diagnostics.importance_diagnostics` (k̂) and :mod:`.memory` (peak memory on CPU);
the result and its rendering are :class:`~pyro_vae.experiments.result.ComparisonResult`.

Example:
    >>> import pyro_vae as pv
    >>> res = pv.compare_objectives(["elbo", "iwae"], {"hidden": [8], "latent_dim": 2, "epochs": 1},
    ...                             train_limit=64, eval_samples=4, snr_repeats=3, snr_ks=(1, 2),
    ...                             memory=False, val_samples=None, progress=False)   # doctest: +SKIP
    >>> [row["objective"] for row in res.table]                                       # doctest: +SKIP
    ['elbo', 'iwae']

References:
    Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR. (active units)
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood, Teh (2018). Tighter variational bounds are not
    necessarily better. ICML. (gradient SNR)
    Tucker, Lawson, Gu, Maddison (2019). Doubly reparameterized gradient estimators for Monte
    Carlo objectives. ICLR.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyro
import torch

from ..build import build_objective, build_vae
from ..config import Config, ConfigError, load_config
from ..data import DataSplits
from ..diagnostics import importance_diagnostics, latent_diagnostics, vae_gradient_snr
from ..evaluation import log_likelihood
from ..objectives import IWAE
from ..registry import OBJECTIVES
from ..runs import eval_data, load_data
from ..train.fit import evaluate_bound, fit, make_optimizer, train_step
from ..vae import VAE
from .memory import collect_probes, start_probes
from .result import ComparisonResult

#: Burda et al.'s threshold on Cov_x(E_q[z_u | x]) for a latent unit to count as active
ACTIVE_UNIT_THRESHOLD = 0.01

#: config keys the comparison's training loop does not implement: they must keep their defaults
#: (early stopping; multi-device / mixed-precision training with Lightning)
UNSUPPORTED_KEYS = ("patience", "accelerator", "devices", "num_nodes", "strategy", "precision")


def _khat(vae: VAE, x: torch.Tensor, num_samples: int | None, memory_budget: float) -> torch.Tensor | None:
    """Per-datapoint PSIS k̂ of ``vae``'s encoder as proposal on ``x`` (``None`` when skipped)."""
    if num_samples is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sample-size / non-finite notices: the k̂ values say it
        return importance_diagnostics(vae, x, num_samples=num_samples, memory_budget=memory_budget).khat


def _paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean of ``a − b`` over paired datapoints and its standard error (std with n − 1, / √n).

    Every objective is scored on the same test digits, so the spread in digit difficulty that
    dominates each run's own standard error cancels in the difference."""
    d = a - b
    n = d.numel()
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return float(d.mean()), se


def _active_units(vae: VAE, x: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Active units of ``vae`` over the rows of ``x``: :func:`pyro_vae.diagnostics.latent_diagnostics`'s
    ``num_active`` (dims u with Cov_x(E_q[z_u|x]) > ``threshold``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sample-size notices concern its KL / I(x; z) estimates, not the count
        return latent_diagnostics(vae, x, active_threshold=threshold, num_mi_samples=1).num_active


# -- input checks ----------------------------------------------------------------------------------
def _resolve(
    objectives: Sequence[str] | Mapping[str, Mapping[str, Any]],
    base: Config | Mapping[str, Any],
    num_particles: int | None,
) -> dict[str, Config]:
    valid = ", ".join(OBJECTIVES)
    if isinstance(objectives, str):
        raise ConfigError(f"objectives must be a list of names, e.g. ['elbo', 'iwae'], not the string {objectives!r}")
    if isinstance(base, Config):
        base_dict = base.to_dict()
    elif isinstance(base, Mapping):
        base_dict = dict(base)
    else:
        raise ConfigError(f"base must be a Config or a dict of config overrides, got {type(base).__name__}")
    if isinstance(objectives, Mapping):
        items = [(str(k), dict(v)) for k, v in objectives.items()]
    else:
        items = []
        for name in objectives:
            if not isinstance(name, str):
                raise ConfigError(f"objective names must be strings, got {name!r}; valid objectives: {valid}")
            items.append((name, {}))
    if not items:
        raise ConfigError(f"no objectives to compare; give one or more of: {valid}")
    labels = [k for k, _ in items]
    dup = sorted({k for k in labels if labels.count(k) > 1})
    if dup:
        raise ConfigError(f"objective labels must be unique, got {dup} more than once")
    configs = {}
    for label, over in items:
        name = over.get("objective", label)
        if name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {name!r}; valid objectives: {valid}")
        values = {**base_dict, **over, "objective": name}
        if num_particles is not None and name != "elbo" and "num_particles" not in over:
            values["num_particles"] = num_particles
        try:
            configs[label] = load_config(None, values)
        except ConfigError as e:
            raise ConfigError(f"objective {label!r}: {e}") from e
    return configs


def _check_int(name: str, value: Any, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")
    return value


# -- the comparison ------------------------------------------------------------------------------
def compare_objectives(
    objectives: Sequence[str] | Mapping[str, Mapping[str, Any]],
    base: Config | Mapping[str, Any] | None = None,
    *,
    num_particles: int | None = None,
    data: DataSplits | None = None,
    train_limit: int | None = None,
    eval_samples: int = 5000,
    khat_samples: int | None = 1000,
    val_samples: int | None = 50,
    snr_repeats: int = 100,
    snr_data: str = "fixed",
    snr_ks: Sequence[int] = (1, 10, 100),
    snr_at: str | None = None,
    memory: bool = True,
    memory_steps: int = 5,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = None,
    rank_by: str = "is",
    ais_subset: int = 50,
    ais_options: Mapping[str, Any] | None = None,
) -> ComparisonResult:
    """Train the same model once per objective and measure each (see :data:`COLUMNS`).

    Every run shares the base configuration, the initial weights (``build_vae`` seeds them with
    ``seed``), the data order and the dynamic-binarization stream; only the objective differs.
    The training loop is :func:`pyro_vae.train.train_step` over the same minibatches
    :func:`pyro_vae.fit` draws (so the trained weights equal ``fit(..., val=None)``'s), timed step
    by step with ``time.perf_counter``.

    Args:
        objectives: config names (``["elbo", "iwae", "dreg"]``; valid names are the keys of
            :data:`pyro_vae.registry.OBJECTIVES`), or a mapping ``label -> config overrides``, e.g.
            ``{"iwae-5": {"objective": "iwae", "num_particles": 5}}`` (``objective`` defaults to
            the label).
        base: a :class:`~pyro_vae.config.Config` or a dict of overrides of the defaults, shared by
            every run (model, data, epochs, batch size, optimizer, seed, ...).
        num_particles: K for every objective except ``"elbo"`` (which keeps ``base``'s, by default
            1) and except where a mapping sets it; ``None`` keeps ``base``'s.
        data: the splits to use (default: the data set ``base`` names, via
            :func:`pyro_vae.runs.load_data`).
        train_limit: train on the first ``train_limit`` training rows only.
        eval_samples: importance samples per test datapoint for the test log-likelihood.
        khat_samples: importance samples per test datapoint for the Pareto k̂ of each trained
            encoder (:func:`pyro_vae.diagnostics.importance_diagnostics`; at least 25);
            ``None`` skips it.
        val_samples: K of the IWAE bound evaluated on the validation split after every epoch (the
            learning curves); ``None`` skips it.
        snr_repeats: gradients per SNR estimate (≥ 2).
        snr_data: ``"fixed"`` — every repeat uses the same training minibatch (binarized once),
            so the SNR measures the estimator's Monte Carlo noise, as in Rainforth et al. and
            Tucker et al.; ``"resample"`` — a fresh random minibatch (and binarization) per
            repeat, so data subsampling noise is included.
        snr_ks: the K values of the SNR-against-K curve (IWAE standard vs DReG); ``()`` skips it.
        snr_at: label of the run whose trained model the SNR-against-K curve uses (default: the
            first objective).
        memory: measure peak memory. On CUDA ``torch.cuda.max_memory_allocated`` over training;
            on CPU the peak resident-set increase during ``memory_steps`` training steps in a
            fresh subprocess per objective (started before training, concurrently).
        out_dir: if given, :meth:`ComparisonResult.write` writes the tables and figures there.
        progress: print one line per epoch and per phase.
        log: where progress lines go (default: ``print`` to stderr).
        rank_by: ``"is"`` ranks by the importance-sampled test log p(x) (the default; fast);
            ``"ais"`` also scores the first ``ais_subset`` test digits of every trained model by
            annealed importance sampling (:func:`pyro_vae.evaluation.ais`) and ranks by that.
            Importance sampling from an encoder with k̂ > 0.7 is biased low by an amount that can
            differ from model to model; AIS's bias does not depend on the encoder as a proposal.
            When ranking by IS while some k̂ > 0.7, the table says the ranking is uncertified and
            gives the exact call that certifies it.
        ais_subset: test digits scored by AIS when ``rank_by="ais"`` (the first ones, the same for
            every objective).
        ais_options: keyword arguments of :func:`~pyro_vae.evaluation.ais` (``num_steps``,
            ``num_chains``, ``num_leapfrog``, ``schedule``, ``init``, ...); default: its defaults
            (1000 sigmoid temperatures, 16 chains, 5 leapfrog steps).

    Raises:
        ConfigError: bad input (unknown objective, invalid config, ``snr_repeats < 2``, ...),
            raised before anything is trained.
    """
    # ---- validate everything first ---------------------------------------------------------------
    configs = _resolve(objectives, base if base is not None else {}, num_particles)
    _check_int("eval_samples", eval_samples, 1)
    if khat_samples is not None:
        _check_int("khat_samples", khat_samples, 25, " (a Pareto tail needs 5 weights)")
    _check_int("snr_repeats", snr_repeats, 2, " (a standard deviation needs two gradients)")
    _check_int("memory_steps", memory_steps, 1)
    if val_samples is not None:
        _check_int("val_samples", val_samples, 1)
    if num_particles is not None:
        _check_int("num_particles", num_particles, 1)
    if train_limit is not None:
        _check_int("train_limit", train_limit, 1)
    ais_opts = _check_ais(rank_by, ais_subset, ais_options)
    if snr_data not in ("fixed", "resample"):
        raise ConfigError(f"snr_data must be 'fixed' or 'resample', got {snr_data!r}")
    snr_ks = tuple(snr_ks)
    for k in snr_ks:
        _check_int("every snr_ks value", k, 1)
    labels = list(configs)
    snr_at = labels[0] if snr_at is None else snr_at
    if snr_at not in configs:
        raise ConfigError(f"snr_at = {snr_at!r} is not one of the compared objectives {labels}")
    first = next(iter(configs.values()))
    shared = {k: v for k, v in first.to_dict().items() if k not in ("objective", "num_particles", "num_outer")}
    for label, cfg in configs.items():
        for key in ("dataset", "seed", "binarize", "pixel_scale", "device", "batch_size"):
            if getattr(cfg, key) != shared[key]:
                raise ConfigError(f"objective {label!r} sets {key} = {getattr(cfg, key)!r} but the comparison shares "
                                  f"{key} = {shared[key]!r}: every run must see the same data, seed and device")
    for key in UNSUPPORTED_KEYS:
        f = Config.__dataclass_fields__.get(key)
        if f is not None and shared[key] != f.default:
            raise ConfigError(f"compare trains every objective for a fixed number of epochs in one process with its own "
                              f"timed loop; {key} = {shared[key]!r} is not supported there (leave it at {f.default!r})")
    if log is None:
        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    say = log if progress else (lambda msg: None)

    # ---- data -------------------------------------------------------------------------------------
    if data is None:
        data = load_data(first)
    train = data.train if train_limit is None else data.train[:train_limit]
    if train.shape[0] == 0:
        raise ConfigError("the training split is empty")
    device = torch.device(first.device)
    dynamic = first.binarize == "dynamic"
    test = eval_data(data, first).to(device)
    val = data.val.to(device) if data.val.shape[0] else None
    if val is not None and dynamic:  # as fit() does: binarized once, generator seed + 1
        val = torch.bernoulli(data.val, generator=torch.Generator().manual_seed(first.seed + 1)).to(device)
    num_data = train.shape[0]
    bs = min(first.batch_size, num_data)
    g = torch.Generator().manual_seed(first.seed + 2)
    snr_batch = train[torch.randperm(num_data, generator=g)[:bs]]
    if dynamic:
        snr_batch = torch.bernoulli(snr_batch, generator=g)
    snr_batch = snr_batch.to(device)

    def fresh_batch() -> torch.Tensor:
        xb = train[torch.randperm(num_data, generator=g)[:bs]]
        return (torch.bernoulli(xb, generator=g) if dynamic else xb).to(device)

    batch_source = fresh_batch if snr_data == "resample" else None
    say(f"compare: {', '.join(f'{k} ({c.objective}, K={c.num_particles})' for k, c in configs.items())} on "
        f"{data.name}: {num_data} training rows, {test.shape[0]} test rows, {first.epochs} epochs, "
        f"batch {first.batch_size}, {torch.get_num_threads()} torch threads")

    # ---- memory (CPU: fresh subprocesses, started before training so timings are not disturbed) ----
    mem: dict[str, dict[str, Any]] = {}
    tmpdir = None
    procs: dict[str, subprocess.Popen] = {}
    if memory and device.type == "cpu":
        say(f"memory: {len(configs)} subprocess(es), {memory_steps} training steps each")
        tmpdir = tempfile.TemporaryDirectory(prefix="pyro_vae_compare_")
        first_batch = train[:bs]
        if dynamic:
            first_batch = torch.bernoulli(first_batch, generator=torch.Generator().manual_seed(first.seed))
        procs = start_probes(configs, first_batch, num_data, data.image_shape, memory_steps, Path(tmpdir.name))
        mem = collect_probes(procs)
        tmpdir.cleanup()

    # ---- train and measure, one objective at a time -----------------------------------------------
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, float]]] = {}
    models: dict[str, VAE] = {}
    lls: dict[str, torch.Tensor] = {}
    ais_lls: dict[str, torch.Tensor] = {}
    for label, cfg in configs.items():
        vae = build_vae(cfg, data.x_dim, data.image_shape, train)
        objective = build_objective(cfg)
        if memory and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # Monte Carlo KL notice
            step_times, curve = _train(vae, objective, cfg, train, val, device, dynamic, val_samples, label, say)
        if memory and device.type == "cuda":
            mem[label] = {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                          "memory_method": "cuda: torch.cuda.max_memory_allocated over training"}
        vae.eval()
        say(f"[{label}] evaluating: test ELBO, log p(x) with K={eval_samples}, active units, gradient SNR")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(cfg.seed + 7)
                test_elbo = evaluate_bound(vae.model, vae.guide, test)
                ll = log_likelihood(vae.model, vae.guide, test, num_samples=eval_samples,
                                    memory_budget=cfg.eval_memory_mb * 2**20)
                snr = vae_gradient_snr(vae, objective, snr_batch, snr_repeats, num_data=num_data, seed=cfg.seed + 3,
                                       batch_source=batch_source)
                n_active = _active_units(vae, test)
                khat = _khat(vae, test, khat_samples, cfg.eval_memory_mb * 2**20)
            if rank_by == "ais":
                say(f"[{label}] AIS on the first {min(ais_subset, test.shape[0])} test digits "
                    f"({ais_opts.get('num_steps', 'default')} temperatures)")
                from ..evaluation.annealing import ais

                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    a = ais(vae.model, vae.guide, test[:ais_subset], memory_budget=cfg.eval_memory_mb * 2**20,
                            progress=False, **{"seed": cfg.seed + 9, **ais_opts})
                ais_lls[label] = a.per_datapoint.detach().double().cpu()
        m = mem.get(label, {"peak_memory_mb": math.nan, "memory_method": "not measured"})
        lls[label] = ll.per_datapoint.detach().double().cpu()
        delta, delta_se = _paired_difference(lls[label], lls[labels[0]])
        row = {
            "objective": label,
            "config_objective": cfg.objective,
            "num_particles": cfg.num_particles,
            "num_outer": cfg.num_outer,
            "epochs": cfg.epochs,
            "steps": len(step_times),
            "test_log_likelihood": ll.mean,
            "test_log_likelihood_se": ll.stderr,
            "delta_log_likelihood": delta,
            "delta_log_likelihood_se": delta_se,
            "eval_samples": eval_samples,
            "test_elbo": test_elbo,
            "val_bound": curve[-1]["val_bound"] if curve else math.nan,
            "khat_median": float(khat.median()) if khat is not None else math.nan,
            "khat_over_0_7": float((khat > 0.7).double().mean()) if khat is not None else math.nan,
            "active_units": n_active,
            "latent_dim": cfg.latent_dim,
            "snr_encoder": snr.get("encoder", math.nan),
            "snr_decoder": snr.get("decoder", math.nan),
            "seconds_per_step": statistics.median(step_times),
            "train_seconds": sum(step_times),
            "peak_memory_mb": float(m["peak_memory_mb"]),
            "memory_method": m["memory_method"],
            **_ais_columns(ais_lls, lls, label, labels[0]),
        }
        say(f"[{label}] log p(x) {ll.mean:.2f} ± {ll.stderr:.2f}, test ELBO {test_elbo:.2f}, active units "
            f"{row['active_units']}/{cfg.latent_dim}, SNR enc {row['snr_encoder']:.3f} dec {row['snr_decoder']:.3f}, "
            f"{row['seconds_per_step']:.4f} s/step, peak {row['peak_memory_mb']:.1f} MiB")
        rows.append(row)
        curves[label] = curve
        models[label] = vae

    _rank(rows, rank_by)

    # ---- SNR against K: standard IWAE gradient vs DReG at one trained model -------------------------
    snr_curve: list[dict[str, Any]] = []
    if snr_ks:
        vae = models[snr_at]
        cfg = configs[snr_at]
        for k in snr_ks:
            for est in ("standard", "dreg"):
                say(f"SNR at the {snr_at} model: IWAE-{k} {est}, {snr_repeats} gradients")
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    s = vae_gradient_snr(vae, IWAE(num_particles=k, gradient=est), snr_batch, snr_repeats,
                                         num_data=num_data, seed=cfg.seed + 4, batch_source=batch_source)
                snr_curve.append({"estimator": est, "K": k, "snr_encoder": s.get("encoder", math.nan),
                                  "snr_decoder": s.get("decoder", math.nan)})
    settings = {
        "base": {k: v for k, v in shared.items()},
        "objectives": {k: {"objective": c.objective, "num_particles": c.num_particles, "num_outer": c.num_outer}
                       for k, c in configs.items()},
        "dataset": data.name,
        "num_train": num_data,
        "num_val": 0 if val is None else int(val.shape[0]),
        "num_test": int(test.shape[0]),
        "eval_samples": eval_samples,
        "khat_samples": khat_samples,
        "val_samples": val_samples,
        "snr_repeats": snr_repeats,
        "snr_data": snr_data,
        "snr_ks": list(snr_ks),
        "snr_at": snr_at,
        "snr_batch_size": bs,
        "memory_steps": memory_steps if memory else None,
        "active_units": f"pyro_vae.diagnostics.latent_diagnostics (Burda et al.: Cov_x(E_q[z_u|x]) > "
                        f"{ACTIVE_UNIT_THRESHOLD}, test split)",
        "rank_by": rank_by,
        "ais_subset": min(ais_subset, int(test.shape[0])) if rank_by == "ais" else None,
        "ais_options": dict(ais_opts) if rank_by == "ais" else None,
        "certify_call": _certify_call(objectives, base, num_particles, train_limit, eval_samples, ais_subset, ais_opts),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
                   f"torch {torch.__version__}, pyro {pyro.__version__}",
    }
    result = ComparisonResult(rows, snr_curve, curves, settings, models,
                              {k: [float(v) for v in t] for k, t in lls.items()},
                              {k: [float(v) for v in t] for k, t in ais_lls.items()})
    if out_dir is not None:
        for p in result.write(out_dir):
            say(f"wrote {p}")
    return result


#: options of :func:`pyro_vae.evaluation.ais` that ``ais_options`` may set
AIS_OPTIONS = ("num_steps", "num_chains", "num_leapfrog", "schedule", "init", "step_size", "target_accept",
               "pilot_steps", "mass", "seed")


def _check_ais(rank_by: str, ais_subset: Any, ais_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``rank_by`` and the AIS options before anything is trained; return the options."""
    if rank_by not in ("is", "ais"):
        raise ConfigError(f"rank_by must be 'is' (importance sampling) or 'ais' (annealed importance sampling), "
                          f"got {rank_by!r}")
    _check_int("ais_subset", ais_subset, 1, " (test digits scored by AIS)")
    opts = dict(ais_options or {})
    unknown = sorted(set(opts) - set(AIS_OPTIONS))
    if unknown:
        raise ConfigError(f"ais_options: unknown option(s) {unknown}; valid: {', '.join(AIS_OPTIONS)}")
    if "num_steps" in opts:
        _check_int("ais_options['num_steps']", opts["num_steps"], 2, " (the schedule runs from β = 0 to β = 1)")
    for key in ("num_chains", "num_leapfrog"):
        if key in opts:
            _check_int(f"ais_options[{key!r}]", opts[key], 1)
    if opts and rank_by != "ais":
        raise ConfigError("ais_options are used only with rank_by='ais'")
    return opts


def _ais_columns(ais_lls: Mapping[str, torch.Tensor], lls: Mapping[str, torch.Tensor], label: str,
                 first: str) -> dict[str, Any]:
    """The AIS columns of one row (``None`` when AIS was not run): the mean over the AIS subset, its
    paired difference from the first run, and AIS − IS on the same digits (IS's bias there)."""
    if label not in ais_lls:
        return {k: None for k in ("ais_log_likelihood", "ais_log_likelihood_se", "ais_delta", "ais_delta_se",
                                  "ais_minus_is", "ais_minus_is_se")} | {"ais_num_data": 0}
    a = ais_lls[label]
    m = a.numel()
    delta, delta_se = _paired_difference(a, ais_lls[first])
    bias, bias_se = _paired_difference(a, lls[label][:m])
    return {"ais_log_likelihood": float(a.mean()),
            "ais_log_likelihood_se": float(a.std() / math.sqrt(m)) if m > 1 else math.nan,
            "ais_delta": delta, "ais_delta_se": delta_se if label != first else 0.0,
            "ais_minus_is": bias, "ais_minus_is_se": bias_se, "ais_num_data": m}


def _rank(rows: list[dict[str, Any]], rank_by: str) -> None:
    """Set each row's ``rank`` (1 = best) by AIS or IS log p(x); the rows keep their order."""
    key = "ais_log_likelihood" if rank_by == "ais" else "test_log_likelihood"
    order = sorted(range(len(rows)), key=lambda i: -rows[i][key])
    for r, i in enumerate(order, 1):
        rows[i]["rank"] = r


def _certify_call(objectives: Any, base: Any, num_particles: int | None, train_limit: int | None, eval_samples: int,
                  ais_subset: int, ais_opts: Mapping[str, Any]) -> str:
    """The call that repeats this comparison ranked by AIS (printed where the IS ranking is uncertified)."""
    if isinstance(objectives, Mapping):
        objs = repr({str(k): dict(v) for k, v in objectives.items()})
    else:
        objs = repr(list(objectives))
    if isinstance(base, Config):
        defaults = Config().to_dict()
        base = {k: v for k, v in base.to_dict().items() if defaults.get(k) != v and k not in ("objective", "run_dir")}
    args = [objs, repr(dict(base or {}))]
    for name, value in (("num_particles", num_particles), ("train_limit", train_limit)):
        if value is not None:
            args.append(f"{name}={value!r}")
    if eval_samples != 5000:
        args.append(f"eval_samples={eval_samples}")
    args.append(f'rank_by="ais", ais_subset={ais_subset}')
    if ais_opts:
        args.append(f"ais_options={dict(ais_opts)!r}")
    return f"pv.compare_objectives({', '.join(args)})"


def _warm_up(vae: VAE, objective: Any, x: torch.Tensor, kw: dict[str, Any], cfg: Config) -> None:
    """Two untimed steps on throwaway copies, so one-off start-up costs (lazy kernel set-up on the
    first backward pass of a process) do not land in the first objective's step times."""
    v, o = copy.deepcopy(vae), copy.deepcopy(objective)
    params = [p for p in v.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)
    for _ in range(2):
        train_step(lambda *a, **k: o.differentiable_loss(v.model, v.guide, *a, **k), params, opt, (x,), kw,
                   kw["num_data"])


def _train(
    vae: VAE, objective: Any, cfg: Config, train: torch.Tensor, val: torch.Tensor | None, device: torch.device,
    dynamic: bool, val_samples: int | None, label: str, say: Callable[[str], Any],
) -> tuple[list[float], list[dict[str, float]]]:
    """:func:`pyro_vae.fit` with a step timer; returns step times and per-epoch rows."""
    vae.to(device)
    n = train.shape[0]
    first = train[: min(cfg.batch_size, n)].to(device)
    if dynamic:
        first = (first > 0.5).to(first.dtype)
    _warm_up(vae, objective, first, {"num_data": n}, cfg)
    times: list[float] = []
    curve: list[dict[str, float]] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        row = {"epoch": epoch, "seconds": sum(times), "train_bound": metrics["train_elbo"],
               "val_bound": metrics.get("val_elbo", math.nan) if val_samples is not None else math.nan}
        curve.append(row)
        val_text = f", validation IWAE-{val_samples} {row['val_bound']:.2f}" if math.isfinite(row["val_bound"]) else ""
        say(f"[{label}] epoch {epoch}/{cfg.epochs}: train bound {row['train_bound']:.2f}{val_text}, "
            f"{statistics.median(times):.4f} s/step")

    use_val = val is not None and val_samples is not None
    fit(
        vae, objective, train, val if use_val else None,
        epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
        weight_decay=cfg.weight_decay, lr_schedule=None if cfg.lr_schedule == "none" else cfg.lr_schedule,
        grad_clip=cfg.grad_clip or None, dynamic_binarization=dynamic, seed=cfg.seed, device=device,
        progress=False, tensorboard=False, callbacks=[on_epoch],
        on_step=lambda _info, seconds: times.append(seconds),
        val_objective=IWAE(num_particles=val_samples) if use_val else None,
        val_batch_size=max(1, 6400 // val_samples) if use_val else None,
    )
    return times, curve


#: the former name (``pv.compare`` and ``pyro_vae.comparison.compare`` are this function too)
compare = compare_objectives

__all__ = ["compare_objectives", "ACTIVE_UNIT_THRESHOLD", "UNSUPPORTED_KEYS", "AIS_OPTIONS"]
