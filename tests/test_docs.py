"""The documentation site builds (strict: broken links and API references fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("VampPrior", "IAFEncoder", "DiscretizedLogisticDecoder", "log_likelihood", "fit"):
        assert name in api, name


# --------------------------------------------------------------------------------------------
# The package's docstring examples run as doctests (pyproject addopts, root conftest.py)
# --------------------------------------------------------------------------------------------

# Examples (``>>>`` lines that are not ``+SKIP``) in the package when doctests joined CI; lower
# it only on purpose, when examples are removed rather than lost.
MIN_DOCTEST_EXAMPLES = 175


def package_doctests():
    """Every docstring of ``pyro_vae`` with examples, as ``doctest.DocTestFinder`` sees them."""
    import doctest
    import importlib
    import importlib.util
    import pkgutil

    import pyro_vae

    finder = doctest.DocTestFinder()
    found = []
    for info in pkgutil.walk_packages(pyro_vae.__path__, "pyro_vae."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # runs the CLI on import; the root conftest.py ignores it too
        if info.name == "pyro_vae.train.lightning" and importlib.util.find_spec("lightning") is None:
            continue  # optional dependency, likewise ignored by the root conftest.py
        module = importlib.import_module(info.name)
        found += [t for t in finder.find(module, info.name) if t.examples]
    return found


def test_pytest_config_runs_the_package_doctests():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ini = ini["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in ini["addopts"].split()
    assert "pyro_vae" in ini["testpaths"] and "tests" in ini["testpaths"]
    assert (ROOT / "conftest.py").is_file()


def test_docstring_examples_do_not_silently_vanish():
    import doctest

    tests = package_doctests()
    running = [e for t in tests for e in t.examples if not e.options.get(doctest.SKIP)]
    assert len(running) >= MIN_DOCTEST_EXAMPLES, (
        f"{len(running)} runnable docstring examples in pyro_vae, expected at least "
        f"{MIN_DOCTEST_EXAMPLES}: examples were removed or a module stopped being found"
    )
    # and pytest collects every one of those docstrings (nothing over-ignored by conftest.py)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "pyro_vae", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    collected = {line.split("::", 1)[1] for line in res.stdout.splitlines() if "::" in line}
    assert collected == {t.name for t in tests}, collected ^ {t.name for t in tests}
