"""Clocks, interleaved ratios and peak memory for the benchmark (CPU and CUDA)."""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time

import torch


class Clock:
    """Wall-clock seconds of a call, synchronising the device before each clock read."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def time(self, fn) -> float:
        start = self.now()
        fn()
        return self.now() - start


def spread(values) -> dict:
    """Median with min and max (and the count) of a list of ratios or seconds."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def interleaved(clock: Clock, calls: dict, reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each named call, run in turn ``reps`` times (order reversed every other round
    so that drift favours no one); the first ``warmup`` rounds are discarded."""
    names = list(calls)
    seconds = {name: [] for name in names}
    for round_ in range(warmup + reps):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            elapsed = clock.time(calls[name])
            if round_ >= warmup:
                seconds[name].append(elapsed)
    return seconds


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Pairwise ratios of two runs taken in the same rounds."""
    return [a / b for a, b in zip(numerator, denominator)]


def _release_freed_memory() -> None:
    gc.collect()
    try:  # glibc keeps freed heap pages; give them back so RSS starts from what is live
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def peak_memory(fn, device) -> int | None:
    """Bytes the call needs above what was allocated before it (its peak).

    CUDA: the allocator's peak statistics.  CPU: resident set size sampled every 0.5 ms by a
    thread while the call runs (torch releases the GIL in its kernels); ``None`` where
    ``/proc`` is missing.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_freed_memory()
    before = _rss_bytes()
    if before is None:
        fn()
        return None
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    return peak[0] - before
