"""One log-likelihood evaluation in a fresh process: its time and its peak memory.

Run by :mod:`benchmarks.run` as ``python -m benchmarks._worker '<json spec>'``; prints one JSON
line. A fresh process per measurement keeps the peak-RSS number clean (nothing reused from an
earlier contender's freed memory). Before the measured call, one untimed warm-up call on two
digits (K = 200) loads the libraries' kernels and code pages, so the number is the evaluation's
working memory, not one-off library initialisation.

Spec keys: ``method`` (``pyro_vae``, ``pyro_vae_compile``, ``pyro_vae_traced``, ``handwritten``,
``pythae``), ``state`` (path of a ``torch.save``-d dict with the pyro_vae ``state_dict`` and the
net name), ``data`` (path of the test tensor), ``lo``/``hi`` (rows), ``num_samples``, ``budget``
(bytes, pyro_vae only), ``seed``, ``threads``.

The output also holds ``kernels``: what the first-use matmul measurement of
:mod:`pyro_vae._kernels` chose in this process (``pyro_vae._kernels.report()``), and
``settings``: ``pyro_vae.settings`` as a dict.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings


def main(spec: dict) -> dict:
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    import pyro

    import pyro_vae as pv
    from benchmarks import models
    from pyro_vae import _kernels
    from benchmarks._timing import PeakMemory
    from benchmarks.reference_vae import ReferenceVAE
    from benchmarks.reference_vae import log_likelihood as reference_log_likelihood

    saved = torch.load(spec["state"], weights_only=False)
    net = models.NETS[saved["net"]]
    vae = models.library_vae(net)
    vae.load_state_dict(saved["model"])
    vae.eval()
    x = torch.load(spec["data"])[spec["lo"] : spec["hi"]]
    K, method = int(spec["num_samples"]), spec["method"]
    seed = int(spec.get("seed", 0))

    if method.startswith("pyro_vae"):
        kw = dict(memory_budget=float(spec["budget"]))
        if method == "pyro_vae_traced":
            kw["fast_path"] = False

        def run(x=x, K=K, warm=False) -> float:
            pyro.set_rng_seed(seed)
            compile = method == "pyro_vae_compile" and not warm  # compilation is part of the timed run
            return pv.log_likelihood(vae.model, vae.guide, x, num_samples=K, compile=compile, **kw).mean

    elif method == "handwritten":
        ref = ReferenceVAE(models.X_DIM, models.LATENT, net.hidden[0])
        if net.name != "softplus":
            raise ValueError("the hand-written evaluator (benchmarks/reference_vae.py) has the softplus net")
        ref.encoder.load_state_dict(vae.encoder.net.state_dict())
        ref.decoder.load_state_dict(vae.decoder.net.state_dict())

        def run(x=x, K=K, warm=False) -> float:
            return reference_log_likelihood(ref, x, K, generator=torch.Generator().manual_seed(seed))[1]

    elif method == "pythae":
        model = models.pythae_vae(vae, net).eval()

        def run(x=x, K=K, warm=False) -> float:
            torch.manual_seed(seed)
            with torch.no_grad():  # get_nll builds autograd graphs otherwise; no_grad is the fair setting
                return float(model.get_nll(x, n_samples=K))  # pythae's default batch_size=100

    else:
        raise ValueError(f"unknown method {method!r}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warnings are reported by the tests, not here
        # warm-up on 2 digits (not timed, not counted): loads kernels and code pages once
        t0 = time.perf_counter()
        run(x[:2], 200, warm=True)
        warmup_seconds = time.perf_counter() - t0
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            mean = run()
            seconds = time.perf_counter() - t0
    return {
        "method": method,
        "rows": spec["hi"] - spec["lo"],
        "num_samples": K,
        "seconds": seconds,
        "mean_ll": mean,
        "peak_growth_bytes": mem.growth,
        "rss_before_bytes": mem.before,
        "memory_method": mem.method,
        "warmup_seconds": warmup_seconds,
        "kernels": _kernels.report(),
        "settings": dataclasses.asdict(pv.settings),
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
