"""Run directories: what ``pyro-vae train`` writes, read back from Python.

A run directory holds ``config.toml`` (the resolved :class:`~pyro_vae.config.Config`),
``model.pt`` (the trained weights; ``checkpoint.pt`` while training), ``metrics.csv``,
``summary.json``, ``report.md`` and figures. In a notebook::

    >>> import pyro_vae as pv
    >>> vae = pv.load_run("runs/default")                     # doctest: +SKIP
    >>> config, data, vae = pv.runs.Run.load("runs/default")  # doctest: +SKIP
    >>> run = pv.runs.Run.load("runs/default")                # doctest: +SKIP
    >>> pv.log_likelihood(run.vae.model, run.vae.guide, run.test, num_samples=100)  # doctest: +SKIP

:func:`load_run` returns the trained :class:`~pyro_vae.VAE` alone; :meth:`Run.load` returns
the config, the data splits and the VAE together (a named tuple, so it unpacks), with
:attr:`Run.test`, the test split exactly as the run scored it.

:func:`load_data` and :func:`eval_data` are the data a config names and its test split as
scored; the CLI and :func:`pyro_vae.compare_objectives` use the same two.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from .build import build_vae
from .config import Config, ConfigError, load_config
from .data import DataSplits, load_dataset
from .train import load_checkpoint
from .train.fit import CHECKPOINT
from .vae import VAE

#: file names inside a run directory
MODEL = "model.pt"
CONFIG = "config.toml"
SUMMARY = "summary.json"
REPORT = "report.md"

#: seed of the one-off binarization of the test split under ``binarize = "dynamic"``
EVAL_BINARIZE_SEED = 12345


def load_data(config: Config) -> DataSplits:
    """The data a config names (binarized statically when ``binarize = 'static'``)."""
    return load_dataset(
        config.dataset,
        root=config.data_root or None,
        download=config.download,
        pixel_scale=config.pixel_scale,
        binarize=config.binarize if config.binarize == "static" else "none",
        seed=config.seed,
    )


def eval_data(data: DataSplits, config: Config) -> torch.Tensor:
    """Test data as scored: binarized once with a fixed generator under dynamic binarization."""
    if config.binarize == "dynamic":
        return torch.bernoulli(data.test, generator=torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
    return data.test


class Run(NamedTuple):
    """A finished run: its config, its data splits and its trained VAE (in eval mode).

    ``config, data, vae = Run.load(run_dir)`` unpacks like the tuple the CLI has always used.
    """

    config: Config
    data: DataSplits
    vae: VAE

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None) -> "Run":
        """Rebuild a run's config, data and trained model from ``run_dir`` (weights loaded safely).

        Args:
            run_dir: a directory written by ``pyro-vae train`` (or :func:`pyro_vae.cli.run.train_run`).
            device: where to put the model (default: the run's ``device``).

        Raises:
            FileNotFoundError: ``run_dir`` holds no ``config.toml``.
            ConfigError: the stored weights do not fit the stored config.
            CheckpointError: the weights file is not a readable checkpoint.
        """
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG).is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a pyro-vae run directory (no {CONFIG}); train one with `pyro-vae train`")
        overrides = {"run_dir": str(run_dir)}
        if device is not None:
            overrides["device"] = device
        config = load_config(run_dir / CONFIG, overrides)
        if config.model != "vae":
            raise ConfigError(
                f"{run_dir} holds a model = {config.model!r} run; loading runs back (evaluate, sample, reconstruct, "
                "diagnose, pv.load_run) supports model = 'vae' only for now. Its report and summary.json hold the "
                "test numbers; rebuild the model with pyro_vae.build.build_program(config, data) and load model.pt "
                "into program.module"
            )
        model_file = run_dir / MODEL if (run_dir / MODEL).exists() else run_dir / CHECKPOINT
        state = load_checkpoint(model_file, map_location=config.device)
        data = load_data(config)
        vae = build_vae(config, data.x_dim, data.image_shape, data.train)
        try:
            vae.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ConfigError(f"{model_file} does not match {run_dir / CONFIG}: {str(e).splitlines()[0]}") from e
        vae.to(config.device).eval()
        return cls(config, data, vae)

    @property
    def test(self) -> torch.Tensor:
        """The test split as the run scored it (:func:`eval_data`), on the run's device."""
        return eval_data(self.data, self.config).to(self.config.device)


def load_run(run_dir: str | Path, device: str | None = None) -> VAE:
    """The trained :class:`~pyro_vae.VAE` of a run directory, in eval mode.

    ``vae = pv.load_run("runs/default")``; for the config and data splits as well, use
    ``config, data, vae = pv.runs.Run.load("runs/default")``. Raises as :meth:`Run.load`.
    """
    return Run.load(run_dir, device).vae


__all__ = ["load_run", "Run", "load_data", "eval_data", "MODEL", "CONFIG", "SUMMARY", "REPORT"]
