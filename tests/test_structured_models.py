"""Structured models (issue 12): HierarchicalVAE, ConditionalVAE, SemiSupervisedVAE as Pyro programs.

Every number is checked against an independent reference written here, never against the
library itself:

* pyro_vae's ELBO equals ``pyro.infer.Trace_ELBO`` in expectation (the tolerance is the Monte
  Carlo standard error of per-particle log p − log q computed from plain poutine traces);
* ``pv.log_likelihood`` equals a one-datapoint-at-a-time importance sampler (plain loops over
  poutine traces) within Monte Carlo error;
* for M2, ``TraceEnum_ELBO`` and ``pv.log_likelihood`` equal the sums over y of per-y
  quantities obtained by conditioning y (passing it to the program).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import pyro
import pyro.poutine as poutine
import pytest
import torch

import pyro_vae as pv
from pyro_vae import models
from pyro_vae.build import build_model, build_objective, build_program
from pyro_vae.config import Config, ConfigError, load_config
from pyro_vae.program import vectorize

D, C = 8, 3  # data features, classes / context width
K_REF = 150  # draws per datapoint of the one-at-a-time reference sampler


def data(n: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, D, generator=g), generator=g)


def perturb(module: torch.nn.Module, seed: int = 3, scale: float = 0.3) -> torch.nn.Module:
    """Move every weight away from its initialisation so no term is accidentally symmetric."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def hierarchical(inference: str = "bottom_up") -> models.HierarchicalVAE:
    torch.manual_seed(0)
    return models.HierarchicalVAE(D, (3, 2), ((16,), (8,)), activation="tanh", inference=inference)


def conditional(conditional_prior: bool = False) -> models.ConditionalVAE:
    torch.manual_seed(0)
    return models.ConditionalVAE(D, C, 2, (16,), conditional_prior=conditional_prior)


def semisupervised() -> models.SemiSupervisedVAE:
    torch.manual_seed(0)
    return models.SemiSupervisedVAE(D, C, 2, (16,))


def labels(n: int = 4) -> torch.Tensor:
    return torch.arange(n) % C


# -- independent references ----------------------------------------------------------------------
def per_particle_elbo(model, guide, x: torch.Tensor, *args, num_particles: int = 4000) -> torch.Tensor:
    """Σ_b [log p(x_b, z) − log q(z | x_b)] per particle, from plain traces under a particle plate."""
    with torch.no_grad(), pyro.plate("particles", num_particles, dim=-2):
        gt = poutine.trace(guide).get_trace(x, *args)
        mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(x, *args)
    total = torch.zeros(num_particles)
    for tr, sign in ((mt, 1.0), (gt, -1.0)):
        for site in tr.nodes.values():
            if site["type"] == "sample" and not site["name"].startswith("_") and site["name"] not in ("particles", "data"):
                lp = site["fn"].log_prob(site["value"])
                total += sign * lp.expand(num_particles, x.shape[0]).sum(-1)
    return total


def one_at_a_time_log_likelihood(model, guide, x: torch.Tensor, *context, num_samples: int = 300):
    """log (1/K) Σ_k p(x_i, z_k)/q(z_k | x_i) per datapoint, one datapoint and one draw at a time,
    and the delta-method standard error of each estimate."""
    est, se = [], []
    with torch.no_grad():
        for i in range(x.shape[0]):
            args = (x[i : i + 1], *(c[i : i + 1] for c in context))
            lw = []
            for _ in range(num_samples):
                gt = poutine.trace(guide).get_trace(*args)
                mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(*args)
                lw.append(float(mt.log_prob_sum() - gt.log_prob_sum()))
            lw_t = torch.tensor(lw, dtype=torch.float64)
            w = torch.exp(lw_t - lw_t.max())
            est.append(float(torch.logsumexp(lw_t, 0) - math.log(num_samples)))
            se.append(float(w.std() / w.mean() / math.sqrt(num_samples)))
    return torch.tensor(est), torch.tensor(se)


# -- ELBO against Pyro's Trace_ELBO ----------------------------------------------------------------
@pytest.mark.parametrize("inference", ["bottom_up", "top_down"])
def test_hierarchical_elbo_equals_trace_elbo_in_expectation(inference: str) -> None:
    vae = perturb(hierarchical(inference))
    x = data()
    ref = per_particle_elbo(vae.model, vae.guide, x)
    se = float(ref.std() / math.sqrt(len(ref)))
    with torch.no_grad():
        trace_elbo = -pyro.infer.Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1).loss(
            vae.model, vae.guide, x)
    assert trace_elbo == pytest.approx(float(ref.mean()), abs=6 * se)  # the reference is Pyro's estimator
    elbo = pv.objectives.ELBO(num_particles=4000)
    if inference == "bottom_up":  # the prior of z1 depends on z2, drawn after z1 by the guide: Monte Carlo KL
        with pytest.warns(RuntimeWarning, match="'z1'"):
            ours = -elbo.loss(vae.model, vae.guide, x)
        assert elbo.kl_sites == {"z1": "monte carlo", "z2": "analytic"}
    else:  # the ladder guide draws every layer after its parents: closed form everywhere
        ours = -elbo.loss(vae.model, vae.guide, x)
        assert elbo.kl_sites == {"z1": "analytic", "z2": "analytic"}
    assert ours == pytest.approx(trace_elbo, abs=6 * se)
    assert abs(ours - trace_elbo) < 0.05 * abs(trace_elbo)  # and far from a different bound


def test_conditional_elbo_equals_trace_elbo_in_expectation() -> None:
    cvae = perturb(conditional(conditional_prior=True))
    x, c = data(), models.one_hot(labels(), C)
    ref = per_particle_elbo(cvae.model, cvae.guide, x, c)
    se = float(ref.std() / math.sqrt(len(ref)))
    ours = -pv.objectives.ELBO(num_particles=4000).loss(cvae.model, cvae.guide, x, c)
    assert ours == pytest.approx(float(ref.mean()), abs=6 * se)


# -- log-likelihood against a one-datapoint-at-a-time importance sampler ---------------------------
CASES = {
    "hierarchical-bottom_up": lambda: (perturb(hierarchical("bottom_up")), ()),
    "hierarchical-top_down": lambda: (perturb(hierarchical("top_down")), ()),
    "conditional-labels": lambda: (perturb(conditional()), (models.one_hot(labels(2), C),)),
    "conditional-prior-quadrants": lambda: (
        perturb(models.ConditionalVAE(D, D, 2, (16,), conditional_prior=True)), ()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_log_likelihood_equals_one_at_a_time_sampler(case: str) -> None:
    model, context = CASES[case]()
    x = data(2)
    if case.endswith("quadrants"):  # a 4x4 "image": quadrants 0, 1 (its top half) visible, 2, 3 generated
        img = torch.cat([data(2, seed=5), x], dim=1)
        x, c = models.split_quadrants(img, visible=[0, 1], side=4)
        context = (c,)
    ref, ref_se = one_at_a_time_log_likelihood(model.model, model.guide, x, *context, num_samples=K_REF)
    ll = pv.log_likelihood(model.model, model.guide, x, *context, num_samples=20000, memory_budget=1 << 24)
    tol = 4 * ref_se + 0.02 + ref_se**2 * K_REF  # MC error of the reference, plus its Jensen bias (var / 2K ≈ se² K / 2)
    assert torch.all((ll.per_datapoint.double() - ref.double()).abs() < tol), (ll.per_datapoint, ref, ref_se)


def test_semisupervised_log_likelihood_sums_over_y() -> None:
    """log p(x) = log Σ_y p̂(x, y), each term estimated one datapoint at a time with y conditioned."""
    m2 = perturb(semisupervised(), scale=0.1)
    x = data(2)
    per_y, per_se = [], []
    for y in range(C):
        est, se = one_at_a_time_log_likelihood(m2.model, m2.guide, x, torch.full((2,), y), num_samples=2 * K_REF)
        per_y.append(est)
        per_se.append(se)
    est, rel_se = torch.stack(per_y).double(), torch.stack(per_se).double()  # (C, B)
    ref = torch.logsumexp(est, 0)
    share = torch.exp(est - ref)  # p̂(x, y) / p̂(x)
    ref_se = ((share * rel_se) ** 2).sum(0).sqrt()  # relative SE of the sum = SE of its log
    ll = pv.log_likelihood(m2.model, m2.guide, x, num_samples=20000, memory_budget=1 << 24)
    tol = 4 * ref_se + 0.02 + (rel_se**2).max(0).values * 2 * K_REF
    assert torch.all((ll.per_datapoint.double() - ref).abs() < tol), (ll.per_datapoint, ref, ref_se)


def test_traceenum_elbo_on_m2_equals_the_sum_over_y() -> None:
    """TraceEnum_ELBO = Σ_b Σ_y q(y|x_b) [ELBO(x_b, y) − log q(y|x_b)], ELBO(x, y) by conditioning y."""
    m2 = perturb(semisupervised())
    x = data(3)
    with torch.no_grad():
        log_q = m2.classifier(x).logits.log_softmax(-1)  # (B, C)
    ref, var = 0.0, 0.0
    for b in range(x.shape[0]):
        for y in range(C):
            parts = per_particle_elbo(m2.model, m2.guide, x[b : b + 1], torch.tensor([y]), num_particles=3000)
            q = float(log_q[b, y].exp())
            ref += q * (float(parts.mean()) - float(log_q[b, y]))
            var += q**2 * float(parts.var()) / len(parts)
    with torch.no_grad():
        enum = -pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=3000, vectorize_particles=True).loss(
            m2.model, m2.guide, x)
    assert enum == pytest.approx(ref, abs=6 * math.sqrt(2 * var))


def test_m2_trains_with_traceenum_and_beats_chance_with_few_labels() -> None:
    """fit_semisupervised with TraceEnum_ELBO: 3 well-separated binary prototypes, 2 labels each."""
    g = torch.Generator().manual_seed(0)
    protos = torch.tensor([[0.95] * 4 + [0.05] * 4 + [0.5] * 4, [0.05] * 4 + [0.95] * 4 + [0.5] * 4,
                           [0.5] * 4 + [0.05] * 4 + [0.95] * 4])
    y = torch.arange(300) % 3
    x = torch.bernoulli(protos[y], generator=g)
    m2 = models.SemiSupervisedVAE(12, 3, 2, (16,))
    lab, unl = models.split_labelled(y, per_class=2, seed=0)
    before = models.accuracy(m2, x, y)
    hist = models.fit_semisupervised(m2, x[lab], y[lab], x[unl], val=x[:60], val_labels=y[:60], epochs=8, batch_size=50,
                                     lr=1e-2, alpha=10.0, dynamic_binarization=False)
    assert len(hist.epochs) == 8 and hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]
    assert models.accuracy(m2, x, y) > 0.8 > before + 0.2  # chance: 1/3


# -- bad input, before training ------------------------------------------------------------------
def test_context_with_the_wrong_length_names_the_argument() -> None:
    cvae = conditional()
    x, c = data(4), models.one_hot(labels(3), C)
    with pytest.raises(ValueError, match="context c has 3 rows but x has 4"):
        cvae.model(x, c)
    with pytest.raises(ValueError, match="context c has 3 rows"):
        pv.log_likelihood(cvae.model, cvae.guide, x, c, num_samples=5)
    with pytest.raises(ValueError, match="context c has 2 features"):
        cvae.guide(x, torch.zeros(4, 2))
    with pytest.raises(TypeError, match="context c is missing"):
        cvae.guide(x)
    with pytest.raises(ValueError, match="context c has 3 rows"):
        cvae.pack(x, c)


def test_labels_outside_the_classes_raise_before_training() -> None:
    m2 = semisupervised()
    x = data(4)
    weights = [p.detach().clone() for p in m2.parameters()]
    with pytest.raises(ValueError, match=r"labels y holds values \[3\] outside the 3 declared classes"):
        models.fit_semisupervised(m2, x, torch.tensor([0, 1, 2, 3]), x, epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(weights, m2.parameters()))  # nothing trained
    with pytest.raises(ValueError, match="outside the 3 declared classes"):
        m2.model(x, torch.tensor([0, 1, -1, 2]))
    with pytest.raises(ValueError, match="non-integer"):
        m2.guide(x, torch.tensor([0.0, 1.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels y must have shape \(4,\)"):
        m2.model(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside the 3 declared classes"):
        models.one_hot(torch.tensor([0, 5]), 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(latent_dims=(4,), hidden=((8,),)), "at least 2 stochastic layers"),
    (dict(latent_dims=(4, 2), hidden=((8,),)), "hidden gives 1 layers of hidden widths but latent_dims has 2"),
    (dict(latent_dims=(4, 0), hidden=((8,), (8,))), "latent_dims must be positive"),
    (dict(latent_dims=(4, 2), hidden=((8,), ())), r"hidden\[1\] must be a non-empty tuple"),
    (dict(latent_dims=(4, 2), hidden=((8,), (8,)), inference="sideways"), "inference must be one of"),
    (dict(latent_dims=(4, 2), hidden=((8,), (8,)), decoder=pv.decoders.BernoulliDecoder(3, D)),
     r"layers do not connect: decoder maps 3 -> 8 features but p\(x \| z1\) must map latent_dims\[0\] = 4"),
    (dict(latent_dims=(4, 2), hidden=((8,), (8,)), encoder=pv.encoders.DiagNormalEncoder(D, 5)),
     r"layers do not connect: encoder maps 8 -> 5"),
    (dict(latent_dims=(4, 2), hidden=((8,), (8,)), inference="top_down", encoder=pv.encoders.DiagNormalEncoder(D, 4)),
     "drop encoder="),
])
def test_hierarchical_construction_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        models.HierarchicalVAE(D, **kwargs)


def test_conditional_and_m2_construction_errors() -> None:
    with pytest.raises(ValueError, match=r"decoder reads \[z, c\] and must map latent_dim \+ context_dim = 5"):
        models.ConditionalVAE(D, C, 2, decoder=pv.decoders.BernoulliDecoder(2, D))
    with pytest.raises(ValueError, match=r"encoder reads \[x, c\]"):
        models.ConditionalVAE(D, C, 2, encoder=pv.encoders.DiagNormalEncoder(D, 2))
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        models.SemiSupervisedVAE(D, 1)
    with pytest.raises(ValueError, match=r"decoder reads \[z, one_hot\(y\)\]"):
        models.SemiSupervisedVAE(D, C, 2, decoder=pv.decoders.BernoulliDecoder(2, D))


# -- shapes and gradients ------------------------------------------------------------------------
PROGRAMS = {
    "hierarchical-bottom_up": lambda: (hierarchical("bottom_up"), ()),
    "hierarchical-top_down": lambda: (models.HierarchicalVAE(D, (4, 3, 2), ((16,), (8,), (8,)), inference="top_down"), ()),
    "conditional": lambda: (conditional(True), (models.one_hot(labels(5), C),)),
    "semisupervised-labelled": lambda: (semisupervised(), (labels(5),)),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_particle_shapes_and_every_parameter_gets_a_gradient(name: str) -> None:
    module, args = PROGRAMS[name]()
    x = data(5)
    gt = poutine.trace(vectorize(module.guide, 7, 1)).get_trace(x, *args)
    latents = {n: s["value"].shape for n, s in gt.nodes.items() if s["type"] == "sample" and n.startswith("z")}
    assert latents and all(shape[:2] == (7, 5) for shape in latents.values()), latents
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        loss = pv.objectives.IWAE(num_particles=3).differentiable_loss(module.model, module.guide, x, *args)
    extra = module.classification_loss(x, args[0]) if name.startswith("semisupervised") else 0.0
    (loss + extra).backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing
    assert all(bool(torch.isfinite(p.grad).all()) for p in module.parameters())


def test_m2_enumerated_guide_gives_classifier_gradients() -> None:
    m2 = semisupervised()
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m2.model, m2.guide, data(5))
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m2.classifier.parameters())
    gt = poutine.trace(m2.guide).get_trace(data(5))
    assert gt.nodes["y"]["infer"] == {"enumerate": "parallel"}


def test_ladder_merge_is_the_product_of_normals() -> None:
    """precision_weighted against the normalized product of two Normal densities on a grid."""
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    a = torch.distributions.Normal(0.3, 0.7).log_prob(grid)
    b = torch.distributions.Normal(-1.1, 1.9).log_prob(grid)
    p = torch.softmax(a + b, 0)
    mean = float((p * grid).sum())
    sd = float(((p * (grid - mean) ** 2).sum()).sqrt())
    loc, scale = models.precision_weighted(*map(torch.tensor, (0.3, 0.7, -1.1, 1.9)))
    assert float(loc) == pytest.approx(mean, abs=1e-6) and float(scale) == pytest.approx(sd, abs=1e-6)


def test_quadrants_round_trip() -> None:
    img = torch.rand(2, 784)
    x, c = models.split_quadrants(img, visible=[0, 3])
    assert x.shape == (2, 392) and c.shape == (2, 392)
    assert torch.equal(models.merge_quadrants(x, c, visible=[0, 3]), img)
    assert torch.equal(c[:, :14], img[:, :14])  # the first row of the top-left quadrant
    with pytest.raises(ValueError, match="1 to 3 distinct values"):
        models.quadrant_mask([0, 1, 2, 3])


# -- the toolchain: fit, diagnostics, ArviZ ------------------------------------------------------
def test_fit_diagnostics_and_arviz_on_a_conditional_program() -> None:
    cvae = conditional()
    x, c = data(40), models.one_hot(labels(40), C)
    h = pv.fit(cvae.packed_model, pv.objectives.IWAE(num_particles=3), cvae.pack(x, c), guide=cvae.packed_guide, epochs=2,
               batch_size=20, progress=False, tensorboard=False)
    assert len(h.epochs) == 2 and math.isfinite(h.epochs[-1]["train_elbo"])
    diag = pv.diagnostics.importance_diagnostics(cvae.model, cvae.guide, x[:5], num_samples=100, model_args=(c[:5],))
    ll = pv.log_likelihood(cvae.model, cvae.guide, x[:5], c[:5], num_samples=100)
    assert diag.khat.shape == (5,) and ll.per_datapoint.shape == (5,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's own deprecation notices
        idata = pv.to_inference_data(cvae.model, cvae.guide, x[:5], num_samples=30, model_args=(c[:5],))
    assert idata is not None


# -- config and build ------------------------------------------------------------------------------
def test_config_selects_and_checks_the_model() -> None:
    c = load_config(overrides={"model": "hierarchical", "latent_dims": [6, 3], "layer_hidden": [16, 8], "layer_depth": 1,
                               "inference": "top_down"})
    vae = build_model(c, D)
    assert isinstance(vae, models.HierarchicalVAE) and vae.latent_dims == (6, 3) and vae.inference == "top_down"
    assert vae.hidden == ((16,), (8,))
    for overrides, match in [
        ({"model": "ladder"}, "model = 'ladder' is not one of"),
        ({"model": "hierarchical", "latent_dims": [6]}, "latent_dims must list >= 2"),
        ({"model": "hierarchical", "layer_hidden": [16]}, "layer_hidden must give one positive width per stochastic layer"),
        ({"model": "hierarchical", "inference": "both"}, "inference = 'both' is not one of"),
        ({"model": "conditional", "visible_quadrants": [4]}, "visible_quadrants must be"),
        ({"model": "conditional", "context": "colour"}, "context = 'colour'"),
        ({"model": "semisupervised", "objective": "iwae"}, "set objective = 'elbo'"),
        ({"model": "conditional", "prior": "vamp"}, "prior = 'vamp' applies to model = 'vae'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(overrides=overrides)
    with pytest.raises(ConfigError, match="latent_dims must be a list of int"):
        load_config(overrides={"latent_dims": 3})
    with pytest.raises(ConfigError, match="conditional_prior must be true or false"):
        load_config(overrides={"conditional_prior": 1})
    assert Config().model == "vae"
    from pyro_vae import build, registry

    assert set(build.MODELS) == set(registry.MODEL_NAMES) - {"vae"}  # every structured name has a factory


def test_build_program_lays_out_the_data() -> None:
    splits = pv.data.load_dataset("sklearn-digits")
    cfg = load_config(overrides={"model": "conditional", "dataset": "sklearn-digits", "latent_dim": 2, "hidden": [8],
                                 "conditional_prior": True})
    prog = build_program(cfg, splits)
    assert prog.train.shape == (len(splits.train), 64 + 10)
    assert torch.equal(prog.train[:, 64:].argmax(1), splits.train_labels)
    assert bool(((prog.test == 0) | (prog.test == 1)).all())  # evaluation data binarized once
    cfg = load_config(overrides={"model": "semisupervised", "dataset": "sklearn-digits", "labels_per_class": 3,
                                 "latent_dim": 2, "hidden": [8]})
    prog = build_program(cfg, splits)
    assert len(prog.labelled) == 30 and len(prog.labelled) + len(prog.unlabelled) == len(splits.train)
    assert torch.equal(splits.train_labels[prog.labelled].bincount(), torch.full((10,), 3))
    assert isinstance(build_objective(cfg), pyro.infer.TraceEnum_ELBO)


# -- the example -----------------------------------------------------------------------------------
def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "structured_models.py"
    spec = importlib.util.spec_from_file_location("structured_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("which", ["hierarchical", "conditional", "semisupervised"])
def test_example_smoke(which: str) -> None:
    ex = _example()
    out = ex.main(ex.parse_args(["--which", which, "--epochs", "1", "--train-limit", "100", "--num-samples", "30",
                                 "--hidden", "8", "--latent-dim", "4", "--classifier-epochs", "2", "--quiet"]))
    assert math.isfinite(out["test_ll"]) and out["test_ll"] < 0 and 0 <= out["khat_above_0_7"] <= 1
    if which == "semisupervised":
        assert 0 <= out["m2_accuracy"] <= 1 and 0 <= out["baseline_accuracy"] <= 1
