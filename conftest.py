"""Root pytest configuration: the docstring examples of ``pyro_vae`` run as doctests.

``pyproject.toml`` adds ``pyro_vae`` to ``testpaths`` and ``--doctest-modules`` to ``addopts``, so
plain ``python -m pytest`` collects every ``>>>`` example of the package next to ``tests/``.
Each example runs under the same hygiene as a test (``tests/conftest.py``): seeded, an empty param
store, validation on, one torch thread; ``torch``, ``pyro`` and ``pv`` (``pyro_vae``) are in its
namespace without an import. This file sits at the root rather than in ``pyro_vae/`` so that it
is not shipped in the package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterator

import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

# not ``import pyro_vae`` here: a broken package should fail its own items, not this conftest
_PACKAGE = Path(__file__).resolve().parent / "pyro_vae"

collect_ignore = [
    # ``python -m`` entry points: importing them runs the CLI and calls sys.exit
    "pyro_vae/__main__.py",
    "pyro_vae/cli/__main__.py",
]
if importlib.util.find_spec("lightning") is None:
    # optional dependency (the ``scale`` extra): the module raises ImportError without it
    collect_ignore.append("pyro_vae/train/lightning.py")


@pytest.fixture(autouse=True)
def _doctest_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    """Seed and reset Pyro before every doctest of the package (tests/ has its own fixture)."""
    if not Path(request.node.path).resolve().is_relative_to(_PACKAGE):
        yield
        return
    import pyro_vae

    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(torch=torch, pyro=pyro, pv=pyro_vae)
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
