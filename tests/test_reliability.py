"""A run directory is never damaged by a command that fails; one-line errors; exact resume.

The cases of issue 14, each asserting the exit code, the message and the files left behind.
Where it matters (kill -9, two processes, Ctrl-C) they run as real subprocesses; the rest call
``pyro_vae.cli.main`` in this process (faster), with faults injected by monkeypatching.
Everything trains the tiny sklearn-digits model (a few tenths of a second per epoch).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.data import DataError

TINY = ["--dataset", "sklearn-digits", "--certify-digits", "0", "--hidden", "16", "--latent-dim", "3", "--eval-samples", "8",
        "--batch-size", "64", "--no-progress", "--no-figures", "--threads", "1"]


def hashes(run: Path) -> dict[str, str]:
    """Every file under ``run`` (the lock file aside) and its SHA-256."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pyro_vae", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=e, **kw)


def wait_for_epochs(run: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``metrics.csv`` has ``n`` epochs (the checkpoint of epoch ``n`` is written before it)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = run / "metrics.csv"
        if m.exists() and len(m.read_text().strip().splitlines()) - 1 >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("training did not reach the epoch in time")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "--epochs", "2"]) == 0
    return run


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A private copy of a finished 2-epoch run."""
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


# ---- 1. a failing command never damages a run --------------------------------------------------------------
def test_resume_with_overwrite_is_refused_and_the_run_is_untouched(run, capsys):
    before = hashes(run)
    assert main(["train", "--run-dir", str(run), *TINY, "--resume", "--overwrite"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line and "contradict" in line
    assert hashes(run) == before


BAD_OVERWRITES = [
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**32)], "seed"),
    (["--weight-decay", "nan"], "weight_decay"),
    (["--grad-clip", "nan"], "grad_clip"),
    (["--free-bits", "nan"], "free_bits"),
    (["--lr", "inf"], "lr"),
    (["--device", "cuda:7"], "device"),
    (["--device", "tpu"], "device"),
    (["--kl-beta", "inf"], "kl_beta"),
]


@pytest.mark.parametrize("flags,key", BAD_OVERWRITES, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_overwrite_with_a_bad_value_leaves_the_old_run_untouched(run, capsys, flags, key):
    before = hashes(run)
    assert main(["train", "--run-dir", str(run), *TINY, "--overwrite", *flags]) == 2
    assert key in one_line(capsys.readouterr().err)
    assert hashes(run) == before


def test_overwrite_with_data_the_model_cannot_score_leaves_the_old_run_untouched(run, capsys):
    before = hashes(run)
    assert main(["train", "--run-dir", str(run), *TINY, "--overwrite", "--binarize", "none"]) == 2
    assert "binarize" in one_line(capsys.readouterr().err)
    assert hashes(run) == before


def test_resume_overwrite_and_bad_overwrite_as_subprocesses(run):
    before = hashes(run)
    for extra in (["--resume", "--overwrite"], ["--overwrite", "--weight-decay", "nan"]):
        p = cli("train", "--run-dir", str(run), *TINY, *extra)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, err
        assert one_line(err).startswith("pyro-vae train: error:")
        assert hashes(run) == before


def test_overwrite_removes_everything_of_the_old_run(run):
    (run / "evaluation.json").write_text("{}")
    (run / "samples_3.png").write_bytes(b"png")
    (run / "diagnostics").mkdir()
    (run / "diagnostics" / "report.md").write_text("old")
    (run / ".checkpoint.pt.stale.tmp").write_bytes(b"half")
    assert main(["train", "--run-dir", str(run), *TINY, "--epochs", "1", "--overwrite"]) == 0
    names = {p.name for p in run.iterdir()}
    assert not names & {"evaluation.json", "samples_3.png", "diagnostics", ".checkpoint.pt.stale.tmp"}
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1


def test_stale_temp_files_are_cleaned_at_start_and_files_honour_the_umask(run):
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(b"left by a kill")
    old = os.umask(0o027)
    try:
        assert main(["train", "--run-dir", str(run), *TINY, "--epochs", "3", "--resume"]) == 0
    finally:
        os.umask(old)
    assert not list(run.glob(".*.tmp"))
    for name in ("checkpoint.pt", "model.pt", "metrics.csv", "summary.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name


def test_a_second_training_on_the_same_directory_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    first = cli("train", "--run-dir", str(run), *TINY, "--epochs", "400", "--batch-size", "16")
    try:
        wait_for_epochs(run, 1, first)
        before = (run / "config.toml").read_bytes()
        second = cli("train", "--run-dir", str(run), *TINY, "--epochs", "2", "--overwrite")
        resume = cli("train", "--run-dir", str(run), "--resume", "--no-progress")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        line = one_line(err)
        assert f"PID {first.pid}" in line and "another" in line
        _, err = resume.communicate(timeout=120)
        assert resume.returncode == 2 and f"PID {first.pid}" in one_line(err)
        assert (run / "config.toml").read_bytes() == before
        assert first.poll() is None  # the first one trains on
    finally:
        first.kill()
        first.communicate()


HOLD_LOCK = """
import sys
from pyro_vae.train.state import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def held(run):
    """``(run, pid)``: another process holds the run directory's lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield run, holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()


@pytest.mark.parametrize("argv", [
    ["evaluate", "RUN", "--no-progress"],
    ["sample", "RUN", "--num", "4"],
    ["reconstruct", "RUN", "--num", "4"],
    ["diagnose", "RUN", "--samples", "25", "--num-points", "4", "--gap-steps", "0", "--sbc-simulations", "0"],
], ids=lambda a: a[0])
def test_commands_that_write_into_a_run_are_refused_while_another_process_holds_it(held, capsys, argv):
    run, pid = held
    before = hashes(run)
    assert main([str(run) if a == "RUN" else a for a in argv]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"pyro-vae {argv[0]}: error: another pyro-vae process (PID {pid}) is using {run}")
    assert hashes(run) == before


def test_sample_into_another_directory_needs_no_lock_and_fit_distributed_takes_it(held, tmp_path, capsys):
    run, pid = held
    assert main(["sample", str(run), "--num", "4", "--out", str(tmp_path / "s.png")]) == 0  # reads only
    assert (tmp_path / "s.png").exists()
    pytest.importorskip("lightning")
    from pyro_vae.train.lightning import fit_distributed
    from pyro_vae.train.state import RunInUseError

    before = hashes(run)
    x = torch.bernoulli(torch.full((32, 20), 0.5))
    with pytest.raises(RunInUseError, match=f"PID {pid}"):
        fit_distributed(_vae(), train=x, epochs=1, batch_size=16, accelerator="cpu", run_dir=run, resume=True,
                        progress=False)
    assert hashes(run) == before


def test_fit_distributed_cleans_temp_files_under_the_lock(tmp_path):
    pytest.importorskip("lightning")
    from pyro_vae.train.lightning import fit_distributed

    run = tmp_path / "run"
    run.mkdir()
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(b"left by a kill")
    x = torch.bernoulli(torch.full((32, 20), 0.5))
    fit_distributed(_vae(), train=x, epochs=1, batch_size=16, accelerator="cpu", run_dir=run, progress=False)
    assert not list(run.glob(".*.tmp")) and (run / "checkpoint.pt").exists()
    assert (run / ".lock").read_text().strip() == str(os.getpid())


# ---- kill -9 and Ctrl-C, then --resume: bitwise the uninterrupted run --------------------------------------
KILL_INSIDE_WRITE = """
import os, signal, sys
from pyro_vae.train import checkpoint
from pyro_vae.cli import main
real, calls = checkpoint._write_and_sync, []
def half_then_kill(f, data, target):
    if target.name == "checkpoint.pt":
        calls.append(1)
        if len(calls) == 3:  # inside the write of epoch 3's checkpoint: half the bytes, then kill -9
            f.write(data[: len(data) // 2]); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real(f, data, target)
checkpoint._write_and_sync = half_then_kill
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_then_resume_equals_the_uninterrupted_run_bitwise(tmp_path):
    """kill -9 at a random point and inside a checkpoint write, then --resume: bitwise the uninterrupted run."""
    flags = [*TINY, "--epochs", "8", "--batch-size", "16"]
    whole, broken, torn = tmp_path / "whole", tmp_path / "broken", tmp_path / "torn"
    p = cli("train", "--run-dir", str(whole), *flags)
    q = cli("train", "--run-dir", str(broken), *flags)
    t = subprocess.Popen([sys.executable, "-c", KILL_INSIDE_WRITE, "train", "--run-dir", str(torn), *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epochs(broken, 2, q)
    q.send_signal(signal.SIGKILL)
    q.communicate()
    t.communicate(timeout=120)
    assert t.returncode == -signal.SIGKILL
    assert len(list(torn.glob(".checkpoint.pt.*.tmp"))) == 1  # the torn write: only its temp file
    assert pv.train.load_checkpoint(torn / "checkpoint.pt")["epoch"] == 2  # the previous checkpoint, intact
    p.communicate(timeout=120)
    assert p.returncode == 0
    a = torch.load(whole / "model.pt", weights_only=True)["model"]
    assert not (broken / "model.pt").exists() and not (torn / "model.pt").exists()
    resumes = {run: cli("train", "--run-dir", str(run), "--resume", "--no-progress", "--no-figures")  # stored config
               for run in (broken, torn)}
    for run, r in resumes.items():
        _, err = r.communicate(timeout=120)
        assert r.returncode == 0, err
        assert not list(run.glob(".*.tmp"))  # cleaned at start
        b = torch.load(run / "model.pt", weights_only=True)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert (run / "metrics.csv").read_text().count("\n") == 9
        assert json.loads((run / "summary.json").read_text())["test_log_likelihood"] == \
            json.loads((whole / "summary.json").read_text())["test_log_likelihood"]


def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path):
    run = tmp_path / "run"
    p = cli("train", "--run-dir", str(run), *TINY, "--epochs", "400", "--batch-size", "16")
    wait_for_epochs(run, 1, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130
    line = one_line(err)
    assert f"pyro-vae train --resume --run-dir {run}" in line
    assert pv.train.load_checkpoint(run / "checkpoint.pt")["epoch"] >= 1
    assert not list(run.glob(".*.tmp"))


def test_sigterm_exits_143_with_the_resume_hint_and_resume_equals_the_uninterrupted_run(tmp_path):
    """SIGTERM (what ``kill``, systemd and batch schedulers send) is handled like Ctrl-C, exit code 128 + 15."""
    flags = [*TINY, "--epochs", "8", "--batch-size", "16"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    p = cli("train", "--run-dir", str(whole), *flags)
    q = cli("train", "--run-dir", str(run), *flags)
    wait_for_epochs(run, 1, q)
    q.send_signal(signal.SIGTERM)
    _, err = q.communicate(timeout=60)
    assert q.returncode == 143, err
    line = one_line(err)
    assert line.startswith("pyro-vae train: terminated (SIGTERM)")
    assert f"continue with `pyro-vae train --resume --run-dir {run}`" in line
    assert pv.train.load_checkpoint(run / "checkpoint.pt")["epoch"] >= 1  # the last complete checkpoint
    assert not (run / "model.pt").exists() and not list(run.glob(".*.tmp"))
    p.communicate(timeout=120)
    assert p.returncode == 0
    r = cli("train", "--run-dir", str(run), "--resume", "--no-progress", "--no-figures")
    _, err = r.communicate(timeout=120)
    assert r.returncode == 0, err
    a = torch.load(whole / "model.pt", weights_only=True)["model"]
    b = torch.load(run / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_sigterm_handler_is_installed_only_while_train_runs(run):
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def spy(config, **kw):
        seen.append(signal.getsignal(signal.SIGTERM))

    from pyro_vae.cli import run as cli_run

    real, cli_run.train_run = cli_run.train_run, spy
    try:
        assert main(["train", "--run-dir", str(run), "--resume", "--no-progress"]) == 0
    finally:
        cli_run.train_run = real
    assert seen and seen[0] is not before and signal.getsignal(signal.SIGTERM) is before
    assert main(["evaluate", str(run), "--samples", "0"]) == 2  # other commands leave SIGTERM alone
    assert signal.getsignal(signal.SIGTERM) is before


# ---- 2. resume means resume ---------------------------------------------------------------------------------
def test_resume_without_epochs_keeps_the_stored_config(run, capsys):
    before = (run / "config.toml").read_bytes()
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress", "--no-figures"]) == 0
    assert (run / "config.toml").read_bytes() == before
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_resume_may_change_only_the_safe_keys_named(run, capsys):
    before = hashes(run)
    assert main(["train", "--run-dir", str(run), "--resume", "--latent-dim", "5", "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "latent_dim" in line and "epochs" in line
    assert hashes(run) == before
    assert main(["train", "--run-dir", str(run), "--resume", "--epochs", "3", "--no-progress", "--no-figures"]) == 0
    assert pv.config.load_config(run / "config.toml").epochs == 3
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


# ---- 3. divergence is caught at the source --------------------------------------------------------------------
def test_non_finite_weights_stop_training_and_are_never_checkpointed(tmp_path):
    def poisoned():
        torch.manual_seed(0)
        vae = pv.VAE(pv.encoders.DiagNormalEncoder(20, 3, hidden=(16,)), pv.decoders.BernoulliDecoder(3, 20, hidden=(16,)))
        # a gradient that turns non-finite although the loss is finite: the step leaves NaN weights
        next(vae.decoder.parameters()).register_hook(lambda g: g * float("inf"))
        return vae

    x = torch.bernoulli(torch.full((32, 20), 0.5))
    with pytest.raises(FloatingPointError, match="weights became nan; lower the learning rate"):
        pv.fit(poisoned(), train=x, epochs=1, batch_size=32, run_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()  # the one and last step of the run: nothing written
    with pytest.raises(FloatingPointError, match="gradient became"):  # clipping: caught before the step
        pv.fit(poisoned(), train=x, epochs=1, batch_size=32, grad_clip=10.0, progress=False)


def test_a_learning_rate_that_diverges_gets_the_message_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "--epochs", "1", "--lr", "1e30"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "lower the learning rate" in line
    assert not (run / "checkpoint.pt").exists()


# ---- 4. every bad value refused before anything is written ----------------------------------------------------
BAD_VALUES = [
    (["--lr", "inf"], "lr"),
    (["--lr", "nan"], "lr"),
    (["--lr", "1e300"], "lr"),
    (["--lr", "0"], "lr"),
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**32)], "seed"),
    (["--weight-decay", "nan"], "weight_decay"),
    (["--grad-clip", "nan"], "grad_clip"),
    (["--free-bits", "nan"], "free_bits"),
    (["--kl-beta", "nan"], "kl_beta"),
    (["--gaussian-scale", "inf"], "gaussian_scale"),
    (["--renyi-alpha", "nan", "--objective", "renyi"], "renyi_alpha"),
    (["--device", "cuda:7"], "device"),
    (["--device", "gpu0"], "device"),
    (["--threads", "-1"], "threads"),
    (["--epochs", "0"], "epochs"),
]


@pytest.mark.parametrize("flags,key", BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_bad_value_is_refused_before_anything_is_written(tmp_path, capsys, flags, key):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, *flags]) == 2
    assert key in one_line(capsys.readouterr().err)
    assert not run.exists()


@pytest.mark.parametrize("argv,key", [
    (["evaluate", "RUN", "--samples", "0"], "--samples"),
    (["evaluate", "RUN", "--samples", "-3"], "--samples"),
    (["sample", "RUN", "--num", "0"], "--num"),
    (["sample", "RUN", "--seed", "-1"], "--seed"),
    (["reconstruct", "RUN", "--num", "0"], "--num"),
])
def test_bad_values_of_the_other_commands_are_refused(run, capsys, argv, key):
    before = hashes(run)
    assert main([str(run) if a == "RUN" else a for a in argv]) == 2
    assert key in one_line(capsys.readouterr().err)
    assert hashes(run) == before


def _vae(x_dim=20):
    torch.manual_seed(0)
    return pv.VAE(pv.encoders.DiagNormalEncoder(x_dim, 3, hidden=(8,)), pv.decoders.BernoulliDecoder(3, x_dim, hidden=(8,)))


@pytest.mark.parametrize("make", [
    lambda b: b.long(), lambda b: b.bool(), lambda b: b.double(), lambda b: b.numpy(), lambda b: b.numpy().astype(np.uint8),
], ids=["int64", "bool", "float64", "numpy-float32", "numpy-uint8"])
def test_fit_and_log_likelihood_accept_any_real_dtype(make):
    b = torch.bernoulli(torch.full((40, 20), 0.5), generator=torch.Generator().manual_seed(0))
    vae = _vae()
    h = pv.fit(vae, train=make(b), val=make(b[:8]), epochs=1, batch_size=20, progress=False)
    assert math_finite(h.epochs[-1]["train_elbo"])
    torch.manual_seed(1)
    ll = pv.log_likelihood(vae.model, vae.guide, make(b), num_samples=4)
    torch.manual_seed(1)
    ref = pv.log_likelihood(vae.model, vae.guide, b, num_samples=4)
    torch.testing.assert_close(ll.per_datapoint, ref.per_datapoint)


def math_finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def test_log_likelihood_refuses_what_fit_refuses():
    vae = _vae()
    with pytest.raises(DataError, match="expects .*20"):
        pv.log_likelihood(vae.model, vae.guide, torch.bernoulli(torch.full((5, 21), 0.5)), num_samples=4)
    grey = torch.rand(5, 20, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError) as fit_err:
        pv.fit(vae, train=grey, epochs=1, progress=False)
    with pytest.raises(DataError) as ll_err:
        pv.log_likelihood(vae.model, vae.guide, grey, num_samples=4)
    assert str(ll_err.value).split(":", 1)[1] == str(fit_err.value).split(":", 1)[1]
    with pytest.raises(DataError, match="complex"):
        pv.log_likelihood(vae.model, vae.guide, torch.zeros(5, 20, dtype=torch.complex64), num_samples=4)


# ---- 5. one-line errors for operational failures ---------------------------------------------------------------
def test_disk_full_while_training_keeps_the_last_checkpoint_and_says_so(tmp_path, capsys, monkeypatch):
    from pyro_vae.train import checkpoint

    run = tmp_path / "run"
    real = checkpoint._write_and_sync
    calls = {"n": 0}

    def full(f, data, target):
        if target.name == "checkpoint.pt":
            calls["n"] += 1
            if calls["n"] == 2:  # the second epoch's checkpoint
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, data, target)

    monkeypatch.setattr(checkpoint, "_write_and_sync", full)
    assert main(["train", "--run-dir", str(run), *TINY, "--epochs", "3"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "--resume" in line
    assert pv.train.load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


def test_read_only_run_directory_is_one_line(run, capsys, monkeypatch):
    import fcntl

    from pyro_vae.train import state

    before = hashes(run)

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(run / ".lock"))

    monkeypatch.setattr(state.os, "open", ro)
    assert main(["train", "--run-dir", str(run), *TINY, "--overwrite"]) == 2
    assert "Read-only file system" in one_line(capsys.readouterr().err)
    assert hashes(run) == before
    assert fcntl  # (the lock is fcntl.flock on RUN/.lock)


@pytest.mark.parametrize("payload", [
    b"",
    "version",
    "model",
], ids=["0-byte", "bad-version", "bad-model"])
@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_empty_or_malformed_checkpoints_are_one_line(run, capsys, payload, command):
    from pyro_vae.train.checkpoint import FORMAT

    target = run / ("model.pt" if command == "evaluate" else "checkpoint.pt")
    if payload == b"":
        target.write_bytes(b"")
    else:
        state = torch.load(target, weights_only=True)
        state.update({"version": "one"} if payload == "version" else {"model": [1, 2, 3]})
        assert state["format"] == FORMAT
        torch.save(state, target)
    argv = ["evaluate", str(run)] if command == "evaluate" else ["train", "--run-dir", str(run), "--resume", "--epochs", "3"]
    assert main([*argv, "--no-progress"]) == 2
    assert target.name in one_line(capsys.readouterr().err)


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a crafted file would do to an unsafe ``torch.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


#: every entry point that reads a run's files, and each file it reads: (entry point, file, setup)
#: setup "stopped": checkpoint.pt says the run stopped early, so resuming restores the best weights from best.pt;
#: "no-model": model.pt removed, so the commands fall back to checkpoint.pt
PAYLOAD_CASES = [
    ("train --resume", "checkpoint.pt", None),
    ("train --resume", "best.pt", "stopped"),
    ("evaluate", "model.pt", None),
    ("evaluate", "checkpoint.pt", "no-model"),
    ("sample", "model.pt", None),
    ("sample", "checkpoint.pt", "no-model"),
    ("reconstruct", "model.pt", None),
    ("diagnose", "model.pt", None),
    ("pv.load_run", "model.pt", None),
    ("pv.load_run", "checkpoint.pt", "no-model"),
    ("pv.fit(resume=True)", "checkpoint.pt", None),
    ("pv.fit(resume=True)", "best.pt", "stopped"),
    ("fit_distributed(resume=True)", "checkpoint.pt", None),
    ("fit_distributed(resume=True)", "best.pt", "stopped"),
]


@pytest.mark.parametrize("entry,name,setup", PAYLOAD_CASES, ids=[f"{e}:{n}" for e, n, _ in PAYLOAD_CASES])
def test_a_crafted_pickle_payload_runs_in_no_entry_point(run, tmp_path, capsys, entry, name, setup):
    from pyro_vae.train import CheckpointError, save_checkpoint
    from pyro_vae.train.checkpoint import FORMAT, VERSION

    marker = tmp_path / "MARKER"
    python_api = entry.startswith(("pv.fit", "fit_distributed"))
    x = torch.bernoulli(torch.full((32, 20), 0.5), generator=torch.Generator().manual_seed(0))
    if python_api:  # a run of fit itself (the CLI's run has a config the bare VAE here would not match)
        if entry.startswith("fit_distributed"):
            pytest.importorskip("lightning")
        shutil.rmtree(run)
        pv.fit(_vae(), train=x, val=x[:8], epochs=2, batch_size=16, run_dir=run, progress=False)
    if setup == "stopped":
        state = pv.train.load_checkpoint(run / "checkpoint.pt")
        state["stopped_early"] = True
        save_checkpoint(run / "checkpoint.pt", state)
        assert (run / "best.pt").exists()
    if setup == "no-model":
        (run / "model.pt").unlink()
    target = run / name
    torch.save({"format": FORMAT, "version": VERSION, "epoch": 2, "model": _Payload(marker)}, target)
    torch.load(target, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    if python_api:
        kw = dict(train=x, val=x[:8], epochs=3, batch_size=16, run_dir=run, resume=True, progress=False)
        if entry.startswith("fit_distributed"):
            from pyro_vae.train.lightning import fit_distributed

            train, kw = fit_distributed, {**kw, "accelerator": "cpu"}
        else:
            train = pv.fit
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            train(_vae(), **kw)
    elif entry == "pv.load_run":
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            pv.load_run(run)
    else:
        argv = {"train --resume": ["train", "--run-dir", str(run), "--resume", "--no-progress", "--no-figures"],
                "evaluate": ["evaluate", str(run), "--no-progress"],
                "sample": ["sample", str(run), "--num", "4"],
                "reconstruct": ["reconstruct", str(run), "--num", "4"],
                "diagnose": ["diagnose", str(run), "--samples", "25", "--num-points", "4", "--gap-steps", "0",
                             "--sbc-simulations", "0"]}[entry]
        assert main(argv) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"pyro-vae {argv[0]}: error:") and name in line
    assert not marker.exists()


def test_debug_shows_the_traceback(run):
    (run / "model.pt").write_bytes(b"")
    for env, flag in (({}, ["--debug"]), ({"PYRO_VAE_DEBUG": "1"}, [])):
        p = cli(*flag, "evaluate", str(run), env=env)
        _, err = p.communicate(timeout=120)
        assert p.returncode != 0 and "Traceback" in err and "CheckpointError" in err


# ---- 7. small things ---------------------------------------------------------------------------------------------
def test_version_and_threads(run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and pv.__version__ in capsys.readouterr().out
    assert pv.config.load_config(run / "config.toml").threads == 1
    assert pv.config.Config().threads >= 1
