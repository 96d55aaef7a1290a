"""Peak training memory on CPU, measured in fresh processes.

:func:`start_probes` starts one Python process per configuration (concurrently); each runs
:func:`run_probe`: a few training steps on one minibatch and the increase of the resident set
over them (``VmHWM`` after the steps minus ``VmRSS`` before, the high-water mark reset through
``/proc/self/clear_refs``; without ``/proc``, the increase of ``ru_maxrss``). A fresh process
per run keeps one run's allocations out of another's peak. :func:`collect_probes` gathers the
results. On CUDA, :func:`pyro_vae.compare_objectives` reads ``torch.cuda.max_memory_allocated``
instead.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import pyro
import torch

from ..build import build_objective, build_vae
from ..config import Config, load_config
from ..train.fit import collect_parameters, make_optimizer, train_step


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kib() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux


def run_probe(spec_path: str) -> None:
    """Entry point of the memory subprocess: a few training steps, peak resident-set increase as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec["threads"]))
    config = load_config(None, spec["config"])
    batch = torch.load(spec["batch"], weights_only=True)
    vae = build_vae(config, batch.shape[1], tuple(spec["image_shape"]) if spec["image_shape"] else None, batch)
    objective = build_objective(config)
    pyro.set_rng_seed(config.seed)
    kw = {"num_data": int(spec["num_data"])}
    params = collect_parameters(vae.model, vae.guide, (batch,), kw)
    opt = make_optimizer(config.optimizer, params, config.lr, config.weight_decay)
    loss_fn = lambda *a, **k: objective.differentiable_loss(vae.model, vae.guide, *a, **k)  # noqa: E731
    gc.collect()
    method = "cpu: peak resident set (VmHWM) during the steps minus resident set (VmRSS) before them, fresh process"
    base = _proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark (Linux >= 4.0)
            fh.write("5")
    except OSError:
        base = None
    if base is None:  # no /proc: the lifetime peak before and after
        method = "cpu: increase of ru_maxrss (lifetime peak resident set) over the steps, fresh process"
        base = _maxrss_kib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(int(spec["steps"])):
            train_step(loss_fn, params, opt, (batch,), kw, int(spec["num_data"]))
    peak = _proc_status_kib("VmHWM") if method.startswith("cpu: peak resident") else _maxrss_kib()
    print(json.dumps({"peak_memory_mb": max(0, peak - base) / 1024.0, "memory_method": method}))


def start_probes(
    configs: Mapping[str, Config], batch: torch.Tensor, num_data: int, image_shape: tuple[int, ...] | None,
    steps: int, tmp: Path,
) -> dict[str, subprocess.Popen]:
    """Start one fresh Python process per objective (they run concurrently; memory is per process)."""
    torch.save(batch.cpu().contiguous(), tmp / "batch.pt")
    root = str(Path(__file__).resolve().parents[2])  # the folder holding pyro_vae/
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = {}
    for i, (label, cfg) in enumerate(configs.items()):
        spec = {"config": {**cfg.to_dict(), "device": "cpu"}, "batch": str(tmp / "batch.pt"), "num_data": num_data,
                "image_shape": list(image_shape) if image_shape else None, "steps": steps,
                "threads": torch.get_num_threads()}
        path = tmp / f"spec_{i}.json"
        path.write_text(json.dumps(spec))
        procs[label] = subprocess.Popen(
            [sys.executable, "-c", f"from pyro_vae.experiments.memory import run_probe; run_probe({str(path)!r})"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
    return procs


def collect_probes(procs: Mapping[str, subprocess.Popen]) -> dict[str, dict[str, Any]]:
    """Wait for the probes; per label ``{"peak_memory_mb", "memory_method"}`` (a failed probe raises)."""
    out = {}
    for label, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
            raise RuntimeError(f"the memory measurement of {label!r} failed in its subprocess: {tail}")
        out[label] = json.loads(stdout.strip().splitlines()[-1])
    return out


__all__ = ["start_probes", "collect_probes", "run_probe"]
