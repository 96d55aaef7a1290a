"""Typed configuration: defaults, TOML files, flags, and the errors for each kind of mistake."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pyro_vae.config import Config, ConfigError, load_config


def test_defaults_validate_and_round_trip_through_toml(tmp_path):
    c = Config().validate()
    p = tmp_path / "c.toml"
    p.write_text(c.to_toml())
    assert load_config(p) == c


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('latent_dim = 8\nhidden = [32, 16]\nlr = 1\nprior = "vamp"\n')
    c = load_config(p, {"latent_dim": 4})
    assert (c.latent_dim, c.hidden, c.prior) == (4, [32, 16], "vamp")
    assert isinstance(c.lr, float) and c.lr == 1.0  # an int is accepted where a float is declared


@pytest.mark.parametrize(
    "text, match",
    [
        ("latnet_dim = 3\n", "unknown config key 'latnet_dim'.*did you mean 'latent_dim'"),
        ('latent_dim = "8"\n', "latent_dim must be an integer"),
        ("latent_dim = 2.5\n", "latent_dim must be an integer"),
        ("download = 1\n", "download must be true or false"),
        ("hidden = 400\n", "hidden must be a list"),
        ('hidden = ["a"]\n', "hidden must be an integer"),
        ("[model]\nlatent_dim = 3\n", "tables"),
        ("latent_dim = \n", "not valid TOML"),
        ('prior = "gaussian"\n', "prior = 'gaussian' is not one of"),
        ("latent_dim = 0\n", "latent_dim must be >= 1"),
        ("lr = 0\n", "lr must be > 0"),
        ('binarize = "none"\n', "bernoulli.*binarize.*continuous_bernoulli"),
        ('decoder = "poisson"\n', "pixel_scale = 'uint8'"),
        ('pixel_scale = "uint8"\n', "binarize needs pixel_scale"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, {"epoch": 3})


def test_every_registry_name_is_a_config_choice_and_builds():
    from pyro_vae import build, registry

    assert build.OBJECTIVES is registry.OBJECTIVES and build.PRIORS is registry.PRIORS
    for key, table in (("encoder", registry.ENCODERS), ("decoder", registry.DECODERS), ("prior", registry.PRIORS),
                       ("objective", registry.OBJECTIVES)):
        with pytest.raises(ConfigError, match=f"{key} = 'nope' is not one of"):
            load_config(None, {key: "nope"})
        assert table  # every name of the table is accepted by the config (what validate() reads)
    for name in registry.OBJECTIVES:
        c = load_config(None, {"objective": name, "num_particles": 2})
        assert hasattr(build.build_objective(c), "differentiable_loss"), name


# -- import structure (static: every import statement, also those inside functions) ------------------
PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved; a name imported
    from a package counts as its submodule when one exists; ``if TYPE_CHECKING:`` blocks skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            out.add(mod)
            for a in node.names:
                sub = PACKAGE.parent.joinpath(*f"{mod}.{a.name}".split("."))
                if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                    out.add(f"{mod}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    """pyro_vae module -> the pyro_vae modules it imports, with the parent packages each import runs
    (except the root ``pyro_vae``, whose ``__init__`` imports the public API)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        edges = set()
        for name in _imports(path):
            if name == "pyro_vae" or not name.startswith("pyro_vae."):
                continue
            parts = name.split(".")
            edges.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        graph[_module_name(path)] = edges
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_import_inside_the_package_names_a_module_that_exists():
    """Also the lazy ones inside functions, which only fail when their branch runs."""
    missing = []
    for path in PACKAGE.rglob("*.py"):
        for name in _imports(path):
            if name.startswith("pyro_vae.") or name == "pyro_vae":
                target = PACKAGE.parent.joinpath(*name.split("."))
                if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                    missing.append(f"{path.relative_to(PACKAGE)}: {name}")
    assert not missing, missing


def test_registry_config_build_form_no_import_cycle():
    """registry <- config <- build: the registry imports neither, config does not import build
    (not even lazily inside a function), so the three load in any order."""
    g = _graph()
    assert "pyro_vae.registry" in g["pyro_vae.config"]
    assert {"pyro_vae.config", "pyro_vae.registry"} <= g["pyro_vae.build"]
    assert not {"pyro_vae.config", "pyro_vae.build"} & _reaches(g, "pyro_vae.registry")
    assert "pyro_vae.build" not in _reaches(g, "pyro_vae.config")


def test_no_library_module_imports_the_cli():
    """The CLI sits on top: nothing in pyro_vae outside pyro_vae/cli (and the ``python -m pyro_vae``
    entry point) imports it."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli" or rel == Path("__main__.py"):
            continue
        bad = sorted(n for n in _imports(path) if n == "pyro_vae.cli" or n.startswith("pyro_vae.cli."))
        if bad:
            offenders.append(f"{rel}: {', '.join(bad)}")
    assert not offenders, offenders


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"lr": 1e300}, "lr = 1e.300 overflows"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
        ({"grad_clip": float("nan")}, "grad_clip must be a finite number"),
        ({"free_bits": float("nan")}, "free_bits must be a finite number"),
        ({"kl_beta": float("-inf")}, "kl_beta must be a finite number"),
        ({"seed": -1}, r"seed must lie in \[0, 2\*\*32\)"),
        ({"seed": 2**32}, r"seed must lie in \[0, 2\*\*32\)"),
        ({"threads": -2}, "threads must be >= 1"),
        ({"device": "gpu"}, "device = 'gpu' is not a device name"),
        ({"device": "cuda:x"}, "not a device name"),
    ],
)
def test_every_float_finite_seeds_in_range_devices_named(overrides, match):
    """NaN passes every `< 0` check, so finiteness is checked first, for every float key."""
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_absent_devices_are_refused_naming_the_fix():
    import torch

    from pyro_vae.config import check_device

    check_device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"device = 'cuda:{n}' does not exist.*--device cpu"):
        check_device(f"cuda:{n}")


def test_resume_may_change_only_the_resumable_keys():
    from pyro_vae.config import RESUMABLE_KEYS, resume_changes

    stored = load_config(None, {"epochs": 2})
    assert resume_changes(stored, load_config(None, {"epochs": 2})) == {}
    assert resume_changes(stored, load_config(None, {"epochs": 5, "threads": 2})) == {"epochs": 5, "threads": 2}
    with pytest.raises(ConfigError, match=r"cannot change latent_dim \(50 -> 4\).*only epochs, patience"):
        resume_changes(stored, load_config(None, {"epochs": 2, "latent_dim": 4}))
    assert {"epochs", "patience", "threads"} <= set(RESUMABLE_KEYS) and "lr" not in RESUMABLE_KEYS


def test_old_config_files_without_threads_still_load(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("\n".join(line for line in Config().to_toml().splitlines() if not line.startswith("threads")))
    assert load_config(p).threads == Config().threads == 1
