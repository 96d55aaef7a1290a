"""The tutorial notebooks run top to bottom, shrunk with ``PYRO_VAE_SMALL=1``.

Each notebook is read into memory and executed there (the committed file, with its full-size
outputs, is never written), in a kernel started from *this* interpreter: a kernelspec pointing at
``sys.executable`` is written into a temporary directory and only that directory is searched, so
no user- or system-level kernelspec is needed (a fresh venv works) and none is used by accident.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
KERNEL = "python3"


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory) -> list[str]:
    """A private kernelspec directory whose ``python3`` kernel runs ``sys.executable``."""
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    path = kernelspec.install(kernel_name=KERNEL, prefix=str(prefix))
    return [str(Path(path).parent)]


def kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYRO_VAE_SMALL"] = "1"
    # the kernel imports the checkout under test, whatever its working directory
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"
    # one thread: tiny tensors on shared cores are much faster without OpenMP oversubscription
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def test_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {"quickstart", "objectives", "diagnostics", "workflow"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_dirs: list[str], tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    assert km.kernel_spec.argv[0] == sys.executable
    client = nbclient.NotebookClient(
        nb, km=km, kernel_name=KERNEL, timeout=600, allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's cwd: files written land here
    )
    # cleanup_kc: shut the kernel down and close its sockets although the client does not own km;
    # raises CellExecutionError, naming the cell, on any error
    client.execute(cleanup_kc=True, env=kernel_env())

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    first = "".join(o.get("text", "") for o in nb.cells[1].get("outputs", []) if o.output_type == "stream")
    assert "SMALL run" in first, f"{path.name} did not shrink itself: {first!r}"
