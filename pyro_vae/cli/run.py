"""A whole run as a function: data -> model -> fit -> evaluate -> figures -> report.

The CLI is a thin shell over :func:`train_run`. Reading a run back lives in the library,
:mod:`pyro_vae.runs` (``pv.load_run``, ``pv.runs.Run.load``); :func:`load_run`, :func:`load_data`
and ``_eval_data`` here are the same functions, kept for existing callers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..build import build_objective, build_vae
from ..config import Config, ConfigError, check_device, load_config, resume_changes, uses_lightning
from ..data import DataSplits
from ..evaluation import bits_per_dim, log_likelihood
from ..runs import CONFIG, MODEL, REPORT, SUMMARY, Run, load_data
from ..runs import eval_data as _eval_data
from ..train import atomic_write_text, fit, load_checkpoint, save_checkpoint
from ..train.checkpoint import TEMP_SUFFIX, fsync_dir
from ..train.state import LOCK, clean_temp_files, run_lock
from ..train.fit import CHECKPOINT, evaluate_bound
from ..vae import VAE


@dataclass
class RunSummary:
    """Headline numbers of a run (nats per datapoint)."""

    run_dir: str
    epochs: int
    train_seconds: float
    train_elbo: float
    val_elbo: float
    test_elbo: float
    test_log_likelihood: float
    test_log_likelihood_se: float
    eval_samples: int
    bits_per_dim: float
    kl_sites: dict[str, str]
    figures: list[str]
    #: the AIS certificate of the first ``certify_digits`` test digits (summary of AIS − IS), or None
    ais: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:  # noqa: D102
        return dict(self.__dict__)


#: the per-digit AIS certificate ``pyro-vae train`` writes (config key ``certify_digits``)
AIS_JSON = "ais_certificate.json"

RESUME_OVERWRITE = ("--resume and --overwrite contradict each other: --resume continues the run in run_dir, "
                    "--overwrite replaces it; pass one of them")


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """What ``resume`` / ``overwrite`` need from the directory (run before anything is written, and again under the lock)."""
    if resume and overwrite:
        raise ConfigError(RESUME_OVERWRITE)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run_dir {run_dir} exists and is not a directory; choose another --run-dir")
    if not resume and not overwrite and (run_dir / CHECKPOINT).exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or --run-dir DIR to start another"
        )
    if resume and not (run_dir / CHECKPOINT).exists():
        raise FileNotFoundError(f"--resume given but {run_dir / CHECKPOINT} does not exist; drop --resume to start fresh")


def check_launch(config: Config) -> None:
    """Refuse devices this machine does not have (``device``, and ``accelerator = 'gpu'``) before anything is written."""
    check_device(config.device)
    if config.accelerator in ("gpu", "cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError("accelerator = 'gpu' but CUDA is not available on this machine; use --accelerator cpu")
        if config.devices > n:
            raise ConfigError(f"devices = {config.devices} but this machine has {n} GPU(s); pass --devices {n} or fewer")


def prepare(config: Config, resume: bool = False, overwrite: bool = False) -> tuple[DataSplits, VAE]:
    """Load data and build the model, with every check that can fail done before writing."""
    run_dir = Path(config.run_dir)
    _check_run_dir(run_dir, resume, overwrite)
    check_launch(config)
    if resume:  # a damaged checkpoint is refused now, before config.toml is rewritten
        load_checkpoint(run_dir / CHECKPOINT)
    data = load_data(config)
    vae = build_vae(config, data.x_dim, data.image_shape, data.train)
    probe = (data.train > 0.5).float() if config.binarize == "dynamic" else data.train
    vae.decoder.check_data(probe, f"{data.name} training data")
    return data, vae


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` (0: leave torch's default)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _clear_run(run_dir: Path) -> None:
    """Everything of the run in ``run_dir`` (checkpoints, metrics, figures, evaluation.json, diagnostics, ...),
    the lock file aside. Called only once every check has passed, under the lock."""
    for p in run_dir.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    fsync_dir(run_dir)


def _probe_writable(run_dir: Path) -> None:
    """Fail now, with the old run untouched, if ``run_dir`` cannot take new files (read-only, permissions, full)."""
    probe = run_dir / f".write-probe.{os.getpid()}{TEMP_SUFFIX}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    finally:
        probe.unlink(missing_ok=True)


def train_run(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
    log: Any = print,
) -> RunSummary | None:
    """Train, evaluate and report one run into ``config.run_dir``.

    Every check that can fail (the configuration, the devices, the data, the model, the run
    directory's state and whether it can be written) runs before anything is written or
    deleted; then the directory is locked (:func:`pyro_vae.train.state.run_lock`: a second
    training on it stops, naming this process's PID), temp files of an interrupted write are
    removed, and with ``overwrite`` everything of the old run is removed.

    With ``resume`` the run's stored ``config.toml`` is the truth: ``config`` may differ from it
    only in :data:`pyro_vae.config.RESUMABLE_KEYS` (else :class:`ConfigError`); ``config.toml`` is
    rewritten only when one of them changed.

    Any scaling key away from its default (``accelerator``, ``devices > 1``, ``num_nodes > 1``,
    ``strategy``, ``precision``) trains with Lightning (:func:`pyro_vae.train.lightning.fit_distributed`)
    into the same run directory. Under a multi-process launch every process calls this function;
    only rank 0 writes, evaluates and returns the summary (the other processes return ``None``).
    """
    run_dir = Path(config.run_dir)
    if resume and overwrite:
        raise ConfigError(RESUME_OVERWRITE)
    if config.model != "vae":
        return train_structured(config, overwrite=overwrite, resume=resume, progress=progress, log=log)
    changes: dict[str, Any] = {}
    if resume and (run_dir / CONFIG).is_file():
        stored = load_config(run_dir / CONFIG, {"run_dir": config.run_dir})
        changes = resume_changes(stored, config)
    set_threads(config.threads)
    distributed = uses_lightning(config)
    if distributed:
        try:
            from ..train.lightning import process_rank  # ImportError without Lightning
        except ImportError as e:
            raise ConfigError(f"{e}; or drop the scaling flags (--devices, --accelerator, ...) to train in one process") from e
        rank = process_rank(config.devices)
    else:
        rank = 0
    data, vae = prepare(config, resume=resume, overwrite=overwrite)
    if rank != 0:
        return _train(config, data, vae, resume, overwrite, progress, figures, _silent, rank, distributed)
    with run_lock(run_dir):
        _check_run_dir(run_dir, resume, overwrite)  # again, now that no other process can change it
        clean_temp_files(run_dir)
        _probe_writable(run_dir)
        if overwrite:
            _clear_run(run_dir)
        if not resume or set(changes) - {"run_dir"} or not (run_dir / CONFIG).is_file():
            atomic_write_text(run_dir / CONFIG, config.to_toml())
        return _train(config, data, vae, resume, overwrite, progress, figures, log, rank, distributed)


def _train(config: Config, data: DataSplits, vae: VAE, resume: bool, overwrite: bool, progress: bool, figures: bool,
           log: Any, rank: int, distributed: bool) -> RunSummary | None:
    run_dir = Path(config.run_dir)
    log(f"data: {data.describe()}")
    log(f"model: encoder={config.encoder} decoder={config.decoder} prior={config.prior} latent_dim={config.latent_dim} "
        f"hidden={config.hidden} objective={config.objective} (K={config.num_particles})")
    objective = build_objective(config)
    common: dict[str, Any] = dict(
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        lr_schedule=None if config.lr_schedule == "none" else config.lr_schedule,
        grad_clip=config.grad_clip or None,
        patience=config.patience or None,
        dynamic_binarization=config.binarize == "dynamic",
        seed=config.seed,
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        config=config.to_dict(),
        progress=progress,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # MC-KL fallback: reported through kl_sites below
        if distributed:
            from ..train.lightning import fit_distributed

            log(f"training with Lightning: accelerator={_accelerator(config)} devices={config.devices} "
                f"num_nodes={config.num_nodes} strategy={config.strategy} precision={config.precision} "
                f"(batch {config.batch_size} per process)")
            history = fit_distributed(
                vae, objective, data.train, data.val, accelerator=_accelerator(config), devices=config.devices,
                strategy=config.strategy, num_nodes=config.num_nodes, precision=config.precision, **common,
            )
        else:
            history = fit(vae, objective, data.train, data.val, device=config.device, **common)
    train_seconds = time.perf_counter() - t0
    if rank != 0:
        return None
    kl = ", ".join(f"{k}: {v}" for k, v in history.kl_sites.items()) or "n/a"
    log(f"KL terms: {kl}")
    save_checkpoint(run_dir / MODEL, {"model": vae.state_dict(), "config": config.to_dict()})
    if distributed:  # evaluate where the model trained (and in float32: outside any autocast)
        gpu = _accelerator(config) == "gpu" or (_accelerator(config) == "auto" and torch.cuda.is_available())
        device = config.device if (config.device.startswith("cuda") or not gpu) else "cuda"
        config = dataclasses.replace(config, device=device)
        vae.to(device)
    return evaluate_run(config, data, vae, history.epochs, train_seconds, history.kl_sites, progress, figures, log)


#: importance samples per datapoint below which no Pareto k̂ is estimated
KHAT_MIN_SAMPLES = 25


def train_structured(config: Config, *, overwrite: bool = False, resume: bool = False, progress: bool = True,
                     log: Any = print) -> dict[str, Any]:
    """Train, evaluate and report a structured model (``model = "hierarchical" | "conditional" |
    "semisupervised"``, :mod:`pyro_vae.models`) into ``config.run_dir``.

    Writes ``config.toml``, ``model.pt``, ``summary.json`` and ``report.md`` (the hierarchical and
    conditional models also fit's ``checkpoint.pt``/``metrics.csv``): the test log-likelihood per
    datapoint with its standard error and Pareto k̂ (importance sampling from the guide, enumerated
    labels summed exactly), the test ELBO, and for the semi-supervised model the test accuracy beside a
    classifier of the same architecture trained on the labelled digits alone. Every check runs before
    anything is written; ``--resume`` and the scaling keys apply to ``model = "vae"`` only.
    """
    from ..build import build_program
    from ..diagnostics import importance_diagnostics

    run_dir = Path(config.run_dir)
    if resume:
        raise ConfigError(f"--resume applies to model = 'vae' only; model = {config.model!r} trains from the start "
                          "(pass --overwrite to replace the run)")
    if uses_lightning(config):
        raise ConfigError(f"the scaling keys (accelerator, devices, strategy, ...) apply to model = 'vae' only; "
                          f"drop them to train model = {config.model!r} in one process")
    set_threads(config.threads)
    _check_run_dir(run_dir, False, overwrite)
    check_launch(config)
    data = load_data(config)
    program = build_program(config, data)  # refuses data the model cannot take (no labels, not 28x28, ...)
    with run_lock(run_dir):
        _check_run_dir(run_dir, False, overwrite)
        clean_temp_files(run_dir)
        _probe_writable(run_dir)
        if overwrite:
            _clear_run(run_dir)
        atomic_write_text(run_dir / CONFIG, config.to_toml())
        log(f"data: {data.describe()}")
        log(f"model: {config.model} ({type(program.module).__name__}), objective={config.objective}")
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # MC-KL notices: the choice is in the report
            if config.model == "semisupervised":
                history = program.fit(progress=progress)
            else:
                history = program.fit(run_dir=run_dir, progress=progress, config=config.to_dict())
        seconds = time.perf_counter() - t0
        save_checkpoint(run_dir / MODEL, {"model": program.module.state_dict(), "config": config.to_dict()})
        program.module.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # k̂ notices: the numbers are in the report
            test_elbo = evaluate_bound(program.model, program.guide, program.test)
            torch.manual_seed(config.seed + 7)
            budget = config.eval_memory_mb * 2**20
            if config.eval_samples >= KHAT_MIN_SAMPLES:
                d = importance_diagnostics(program.model, program.guide, program.test, num_samples=config.eval_samples,
                                           memory_budget=budget, progress=progress)
                ll, khat = d.log_likelihood, d.khat
            else:  # too few samples for a Pareto tail: no k̂
                ll = log_likelihood(program.model, program.guide, program.test, num_samples=config.eval_samples,
                                    memory_budget=budget, progress=progress).per_datapoint.double()
                khat = torch.full_like(ll, math.nan)
        summary: dict[str, Any] = {
            "run_dir": str(run_dir), "model": config.model, "epochs": config.epochs, "train_seconds": round(seconds, 2),
            "test_elbo": test_elbo, "test_log_likelihood": float(ll.mean()),
            "test_log_likelihood_se": float(ll.std() / math.sqrt(len(ll))), "eval_samples": config.eval_samples,
            "khat_median": float(khat.median()),
            "khat_share_above_0_7": float((khat > 0.7).double().mean()) if bool(torch.isfinite(khat).all()) else math.nan,
            "bits_per_dim": bits_per_dim(float(ll.mean()), data.x_dim),
        }
        if config.model == "semisupervised":
            from ..models import Classifier, accuracy, fit_classifier

            summary["test_accuracy"] = accuracy(program.module, program.test, program.test_labels)
            lab = program.labelled
            torch.manual_seed(config.seed)
            baseline = Classifier(data.x_dim, program.module.num_classes, tuple(config.hidden))
            fit_classifier(baseline, program.train[lab], program.train_labels[lab], lr=config.lr, seed=config.seed,
                           dynamic_binarization=config.binarize == "dynamic")
            summary["baseline_accuracy"] = accuracy(baseline, program.test, program.test_labels)
            summary["num_labelled"] = int(len(lab))
        epochs = getattr(history, "epochs", [])
        atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
        atomic_write_text(run_dir / REPORT, _structured_report(summary, config, data, epochs))
    log("\n".join(f"{k}: {v}" for k, v in summary.items()))
    return summary


def _structured_report(s: dict[str, Any], c: Config, data: DataSplits, epochs: list) -> str:
    rows = [("model", c.model), ("data", data.describe()), ("epochs", s["epochs"]),
            ("train seconds", s["train_seconds"]),
            (f"test log p(x) (IS, K={s['eval_samples']})", f"{s['test_log_likelihood']:.2f} ± {s['test_log_likelihood_se']:.2f} nats"),
            ("test ELBO", f"{s['test_elbo']:.2f} nats"),
            ("Pareto k̂: median, share > 0.7", f"{s['khat_median']:.2f}, {100 * s['khat_share_above_0_7']:.0f}%"
             if math.isfinite(s["khat_median"]) else f"not estimated (eval_samples < {KHAT_MIN_SAMPLES})"),
            ("bits/dim", f"{s['bits_per_dim']:.4f}")]
    if "test_accuracy" in s:
        rows += [("test accuracy (M2)", f"{100 * s['test_accuracy']:.1f}%"),
                 (f"test accuracy, classifier on the {s['num_labelled']} labelled digits alone",
                  f"{100 * s['baseline_accuracy']:.1f}%")]
    out = ["# pyro-vae run report", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    if s["khat_share_above_0_7"] > 0:  # (False for NaN: not estimated)
        out += ["", f"k̂ > 0.7 on {100 * s['khat_share_above_0_7']:.0f}% of the test digits: the importance-sampled "
                "log-likelihood is unreliable there (a lower bound of unknown tightness); see "
                "docs/loglik_trust.md for AIS."]
    if epochs:
        keys = [k for k in epochs[-1] if isinstance(epochs[-1][k], (int, float))]
        out += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(f"{e.get(k, float('nan')):.4g}" for k in keys) + " |" for e in epochs]
    return "\n".join(out) + "\n"


def _accelerator(config: Config) -> str:
    """Lightning's accelerator for a config: ``accelerator``, else what ``device`` names."""
    if config.accelerator:
        return "gpu" if config.accelerator == "cuda" else config.accelerator
    return "gpu" if config.device.startswith("cuda") else "cpu"


def _silent(*args: Any, **kwargs: Any) -> None:
    """The log of processes other than rank 0."""


def evaluate_run(
    config: Config,
    data: DataSplits,
    vae: VAE,
    epochs: list[dict[str, float]],
    train_seconds: float,
    kl_sites: dict[str, str],
    progress: bool,
    figures: bool,
    log: Any = print,
) -> RunSummary:
    """Score the test set, draw the figures, write ``summary.json`` and ``report.md``."""
    run_dir = Path(config.run_dir)
    vae.eval()
    device = torch.device(config.device)
    test = _eval_data(data, config).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test_elbo = evaluate_bound(vae.model, vae.guide, test)
        torch.manual_seed(config.seed + 7)
        ll = log_likelihood(
            vae.model, vae.guide, test, num_samples=config.eval_samples,
            memory_budget=config.eval_memory_mb * 2**20, progress=progress,
        )
    last = epochs[-1] if epochs else {}
    fig_names: list[str] = []
    if figures:
        fig_names = draw_figures(vae, data, test, run_dir, epochs)
    certificate = None
    if config.certify_digits > 0:
        from .ais import ais_against_is, gap_vs_khat_plot

        # AIS beside IS on the first test digits: the report says how far IS is from a tighter bound
        try:
            certificate = ais_against_is(vae, test[: config.certify_digits], num_samples=max(config.eval_samples, 100),
                                         num_steps=config.certify_steps, num_chains=config.certify_chains,
                                         num_leapfrog=5, memory_budget=config.eval_memory_mb * 2**20, seed=config.seed,
                                         progress=progress)
        except (ValueError, NotImplementedError) as e:  # a model AIS cannot run on: say so, keep the run
            log(f"AIS certificate skipped: {e}")
            certificate = None
    if certificate is not None:
        atomic_write_text(run_dir / AIS_JSON, json.dumps(certificate, indent=2) + "\n")
        if figures:
            gap_vs_khat_plot(certificate["per_datapoint"], run_dir / "ais_vs_is.png",
                             title=f"AIS − IS on {config.certify_digits} test digits")
            fig_names.append("ais_vs_is.png")
    summary = RunSummary(
        run_dir=str(run_dir),
        epochs=int(last.get("epoch", 0)),
        train_seconds=round(train_seconds, 2),
        train_elbo=float(last.get("train_elbo", math.nan)),
        val_elbo=float(last.get("val_elbo", math.nan)),
        test_elbo=test_elbo,
        test_log_likelihood=ll.mean,
        test_log_likelihood_se=ll.stderr,
        eval_samples=config.eval_samples,
        bits_per_dim=bits_per_dim(ll.mean, data.x_dim),
        kl_sites=dict(kl_sites),
        figures=fig_names,
        ais=None if certificate is None else certificate["summary"],
    )
    atomic_write_text(run_dir / SUMMARY, json.dumps(summary.to_dict(), indent=2) + "\n")
    report = render_report(summary, config, data)
    if certificate is not None:
        from .ais import ais_section, replace_section

        report = replace_section(report, ais_section(certificate).replace(
            "Written by `pyro-vae evaluate --method ais`.",
            "Written by `pyro-vae train` (config keys certify_digits, certify_steps, certify_chains); `pyro-vae evaluate RUN "
            "--method ais --ais-subset N` scores more digits with the full schedule."))
    atomic_write_text(run_dir / REPORT, report)
    log(format_summary(summary))
    return summary


def draw_figures(vae: VAE, data: DataSplits, test: torch.Tensor, run_dir: Path, epochs: list[dict[str, float]]) -> list[str]:
    """Reconstructions, prior samples, latent map and loss curves as PNGs in ``run_dir``."""
    from .. import plots

    names = []
    with torch.random.fork_rng():
        if data.image_shape is not None:
            value_range = (0.0, 255.0) if data.pixel_scale == "uint8" else (0.0, 1.0)
            plots.reconstructions(vae, test[:10], data.image_shape, n=10, path=run_dir / "reconstructions.png",
                                  value_range=value_range)
            plots.prior_samples(vae, data.image_shape, n=100, path=run_dir / "samples.png", value_range=value_range)
            names += ["reconstructions.png", "samples.png"]
        labels = data.test_labels
        plots.latent_scatter(vae, data.test, labels, path=run_dir / "latent.png")
        names.append("latent.png")
        if epochs:
            plots.loss_curves(epochs, path=run_dir / "loss_curves.png")
            names.append("loss_curves.png")
    return names


def format_summary(s: RunSummary) -> str:
    """The short report printed at the end of ``pyro-vae train``."""
    return (
        f"\n== pyro-vae run {s.run_dir} ==\n"
        f"epochs {s.epochs}, training {s.train_seconds:.1f} s\n"
        f"train ELBO        {s.train_elbo:9.2f} nats\n"
        f"validation ELBO   {s.val_elbo:9.2f} nats\n"
        f"test ELBO         {s.test_elbo:9.2f} nats\n"
        f"test log p(x)     {s.test_log_likelihood:9.2f} ± {s.test_log_likelihood_se:.2f} nats "
        f"(importance sampling, K={s.eval_samples}; {s.bits_per_dim:.4f} bits/dim)\n"
        f"report: {Path(s.run_dir) / REPORT}\n"
    )


def render_report(s: RunSummary, c: Config, data: DataSplits) -> str:
    """``report.md``: the configuration, a results table and the figures."""
    rows = [
        ("data", data.describe()),
        ("model", f"{c.encoder} encoder, {c.decoder} decoder, {c.prior} prior, latent_dim {c.latent_dim}, "
                  f"hidden {c.hidden} ({c.activation}, {c.network})"),
        ("objective", f"{c.objective}, {c.num_particles} particle(s); KL: "
                      + (", ".join(f"{k} {v}" for k, v in s.kl_sites.items()) or "n/a")),
        ("training", f"{s.epochs} epochs, batch {c.batch_size}, {c.optimizer} lr {c.lr:g}, seed {c.seed}, "
                     f"{s.train_seconds:.1f} s" + (
                         f"; Lightning, {c.devices * c.num_nodes} process(es) ({c.strategy}), batch per process, "
                         f"precision {c.precision}" if uses_lightning(c) else "")),
    ]
    out = ["# pyro-vae run report", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    out += [
        "",
        "## Results (nats per datapoint)",
        "",
        "| split | bound | value |",
        "|---|---|---:|",
        f"| train | ELBO (last epoch, running mean) | {s.train_elbo:.2f} |",
        f"| validation | ELBO | {s.val_elbo:.2f} |",
        f"| test | ELBO | {s.test_elbo:.2f} |",
        f"| test | log p(x), importance sampled (K={s.eval_samples}) | {s.test_log_likelihood:.2f} ± {s.test_log_likelihood_se:.2f} |",
        f"| test | bits/dim | {s.bits_per_dim:.4f} |",
        "",
    ]
    titles = {
        "reconstructions.png": "Test digits (odd rows) and their reconstructions (even rows)",
        "samples.png": "Samples: means of p(x|z), z ~ p(z)",
        "latent.png": "Posterior means of the test set, 2-D projection, coloured by label",
        "loss_curves.png": "Training and validation bounds by epoch",
    }
    for f in s.figures:
        out += [f"### {titles.get(f, f)}", "", f"![{f}]({f})", ""]
    return "\n".join(out)


def load_run(run_dir: str | Path, device: str | None = None) -> Run:
    """``(config, data, vae)`` of a finished run: :meth:`pyro_vae.runs.Run.load` (kept for existing callers;
    ``pv.load_run`` returns the VAE alone)."""
    return Run.load(run_dir, device)


__all__ = ["train_run", "load_run", "evaluate_run", "RunSummary", "prepare", "load_data", "check_launch", "set_threads"]
