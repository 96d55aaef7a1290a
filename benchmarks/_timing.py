"""Interleaved ratio timing and peak-memory measurement.

Timings on a shared machine drift by tens of percent from minute to minute, so no absolute time
is reported alone: each contender is timed against a baseline *in the same process*, in
alternating blocks (A B C, then C B A, ...: every contender sees the same mix of load), and the
reported number is the median over repeats of each repeat's ratio t(contender) / t(baseline).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Timing:
    """Median per-call seconds of every contender and the median per-repeat ratios to the baseline."""

    baseline: str
    seconds: dict[str, float]  # median seconds per call
    ratio: dict[str, float]  # median over repeats of t / t_baseline
    ratio_lo: dict[str, float]  # min over repeats
    ratio_hi: dict[str, float]  # max over repeats
    repeats: int
    calls_per_repeat: dict[str, int] = field(default_factory=dict)


def interleaved(
    fns: dict[str, Callable[[], object]],
    baseline: str,
    repeats: int = 7,
    min_block_seconds: float = 0.25,
    warmup: int = 2,
) -> Timing:
    """Time ``fns`` against ``fns[baseline]``, interleaved, and return per-repeat ratio medians.

    Each function is warmed up ``warmup`` times; then each repeat times a block of ``n`` calls of
    every function (``n`` chosen per function so a block lasts about ``min_block_seconds``), the
    order reversed every other repeat.
    """
    names = list(fns)
    if baseline not in fns:
        raise KeyError(baseline)
    calls: dict[str, int] = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        t0 = time.perf_counter()
        fns[name]()
        one = max(time.perf_counter() - t0, 1e-6)
        calls[name] = max(1, int(round(min_block_seconds / one)))
    per_call: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            f, n = fns[name], calls[name]
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            per_call[name].append((time.perf_counter() - t0) / n)
    base = per_call[baseline]
    ratios = {n: [a / b for a, b in zip(per_call[n], base)] for n in names}
    return Timing(
        baseline=baseline,
        seconds={n: statistics.median(v) for n, v in per_call.items()},
        ratio={n: statistics.median(v) for n, v in ratios.items()},
        ratio_lo={n: min(v) for n, v in ratios.items()},
        ratio_hi={n: max(v) for n, v in ratios.items()},
        repeats=repeats,
        calls_per_repeat=calls,
    )


# -- memory ------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _ru_maxrss()


def _ru_maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process; ``False`` if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak` (``VmHWM``), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _ru_maxrss()


class PeakMemory:
    """Peak RSS growth of a block of code: ``peak RSS during the block − RSS before it``.

    CPU tensors have no allocator counter in torch, so this is the honest proxy: resident memory
    the process really took from the OS. It includes everything the code touched (temporaries,
    allocator slack) and excludes memory it reused from earlier frees, so run it in a fresh
    process (``benchmarks._worker``) for a clean number. Uses the kernel's resettable peak counter
    when available (Linux ≥ 4.0), otherwise ``ru_maxrss`` (then an upper bound if an earlier
    peak was higher).
    """

    def __enter__(self) -> "PeakMemory":
        self.exact = reset_peak()
        self.before = rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        self.peak = peak_rss_bytes()
        self.growth = max(0, self.peak - self.before)
        self.method = "VmHWM reset (exact peak)" if self.exact else "ru_maxrss (upper bound)"


__all__ = ["Timing", "interleaved", "PeakMemory", "rss_bytes", "peak_rss_bytes", "reset_peak"]
