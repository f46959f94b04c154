"""The machine a benchmark ran on: CPU, memory, versions, and its fp32 peak (nominal and measured)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import psutil

PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnx",
    "tokenizers",
    "torch",
    "transformers",
    "sentence-transformers",
    "faiss-cpu",
    "lightgbm",
    "grpcio",
)


@dataclass(frozen=True)
class Cpu:
    """What /proc/cpuinfo (or the platform module elsewhere) says about the CPU."""

    model: str
    vendor: str
    family: int
    physical_cores: int
    logical_cpus: int
    mhz: float
    """The clock the kernel reports; under a hypervisor this is usually the base/TSC clock."""
    flags: frozenset[str]


@cache
def cpu() -> Cpu:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    family = fields.get("cpu family", "0")
    return Cpu(
        model=fields.get("model name", platform.processor() or "unknown"),
        vendor=fields.get("vendor_id", "unknown"),
        family=int(family) if family.isdigit() else 0,
        physical_cores=psutil.cpu_count(logical=False) or 1,
        logical_cpus=psutil.cpu_count(logical=True) or 1,
        mhz=float(fields.get("cpu MHz", "0") or 0),
        flags=frozenset(fields.get("flags", "").split()),
    )


def nominal_flops_per_cycle(c: Cpu) -> tuple[int, str]:
    """fp32 FLOP per cycle per core from the ISA: FMA units x fp32 lanes x 2 (an FMA is 2 FLOP)."""
    if "avx512f" in c.flags:
        if c.vendor == "AuthenticAMD" and c.family == 0x19:
            return 32, "Zen 4: AVX-512 issued as 2 x 256-bit FMA pipes -> 2 x 8 lanes x 2"
        # Zen 5 (family 0x1A) and Intel server cores: two 512-bit FMA pipes.
        return 64, "AVX-512 with 2 x 512-bit FMA pipes -> 2 x 16 lanes x 2"
    if "avx2" in c.flags and "fma" in c.flags:
        return 32, "AVX2: 2 x 256-bit FMA pipes -> 2 x 8 lanes x 2"
    return 8, "SSE: 1 x 128-bit multiply + 1 add -> 4 lanes x 2"


# Each of 12 independent accumulators gets one FMA per iteration: enough to cover the 4-cycle
# FMA latency on 2 pipes (8 in flight). GCC's vector extension compiles to the widest native
# width with -march=native. The add chain measures the real clock: 1 dependent add per cycle.
# Both run in 60 short bursts and the best burst of each counts: on a shared machine some
# bursts get preempted, the best one ran undisturbed.
_KERNEL = r"""
#include <stdio.h>
#include <stdint.h>
#include <time.h>
typedef float v16 __attribute__((vector_size(64)));
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
int main(void){
  double best_ghz = 0, best_gflops = 0;
  v16 a[12], b, c;
  for (int j = 0; j < 16; j++) { b[j] = 1.0000001f; c[j] = 0.9999999f; }
  for (int k = 0; k < 12; k++) for (int j = 0; j < 16; j++) a[k][j] = (float)k;
  uint64_t x = 1;
  for (int burst = 0; burst < 60; burst++) {
    uint64_t n = 20000000ULL;
    double t0 = now();
    for (uint64_t i = 0; i < n; i++) { __asm__ volatile("add $1, %0" : "+r"(x)); }
    double ghz = n / (now() - t0) / 1e9;
    if (ghz > best_ghz) best_ghz = ghz;
    long iters = 2000000;
    t0 = now();
    for (long i = 0; i < iters; i++) { for (int k = 0; k < 12; k++) a[k] = a[k] * b + c; }
    double gflops = (double)iters * 12 * 16 * 2 / (now() - t0) / 1e9;
    if (gflops > best_gflops) best_gflops = gflops;
  }
  float s = 0; for (int k = 0; k < 12; k++) for (int j = 0; j < 16; j++) s += a[k][j];
  printf("%f %f %f %llu\n", best_ghz, best_gflops, s, (unsigned long long)x);
  return 0;
}
"""


@dataclass(frozen=True)
class MeasuredPeak:
    """fp32 FMA throughput of one core, measured with a compiled kernel."""

    available: bool
    reason: str = ""
    ghz: float = float("nan")
    """Median clock measured by the add chain (boost clock, not the kernel's reported MHz)."""
    gflops_per_core: float = float("nan")
    cores: int = 0

    @property
    def flops_per_cycle(self) -> float:
        return self.gflops_per_core / self.ghz

    @property
    def gflops(self) -> float:
        return self.gflops_per_core * self.cores


@cache
def measured_peak() -> MeasuredPeak:
    """Compile and run the FMA kernel; its best bursts give the clock and FLOP/s of one core."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.machine() not in ("x86_64", "AMD64"):
        return MeasuredPeak(False, "no C compiler or not x86-64: nominal peak only")
    cores = cpu().physical_cores
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(_KERNEL)
        build = subprocess.run(
            [compiler, "-O3", "-march=native", "-ffp-contract=fast", "-o", str(exe), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if build.returncode != 0:
            return MeasuredPeak(False, f"kernel did not compile: {build.stderr.strip()[:200]}")
        # One core at a time: concurrent copies on a shared, oversubscribed VM measured each
        # other's preemption rather than the hardware. The peak assumes every core sustains it.
        run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
        ghz, gflops = (float(v) for v in run.stdout.split()[:2])
    return MeasuredPeak(True, ghz=ghz, gflops_per_core=gflops, cores=cores)


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matrix-multiply rate of numpy's BLAS here (a reference, not a ceiling)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def blas_architecture() -> str:
    """The kernel family numpy's OpenBLAS chose at run time, when threadpoolctl can tell."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    archs = [i.get("architecture", "") for i in threadpool_info() if i.get("user_api") == "blas"]
    return archs[0] if archs and archs[0] else "unknown"


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def proactive_reclaim() -> str | None:
    """The kernel's proactive reclaim of idle memory, where DAMON runs one (its sysfs admin
    interface): e.g. `pageout` of page-cache pages no process maps, once idle for 60 s."""
    found = []
    for kd in sorted(Path("/sys/kernel/mm/damon/admin/kdamonds").glob("[0-9]*")):
        try:
            if (kd / "state").read_text().strip() != "on":
                continue
            for ctx in sorted((kd / "contexts").glob("[0-9]*")):
                aggr_us = int((ctx / "monitoring_attrs/intervals/aggr_us").read_text())
                for sch in sorted((ctx / "schemes").glob("[0-9]*")):
                    action = (sch / "action").read_text().strip()
                    age = int((sch / "access_pattern/age/min").read_text())
                    allow: dict[bool, list[str]] = {True: [], False: []}
                    for f in sorted((sch / "ops_filters").glob("[0-9]*")):
                        kind = (f / "type").read_text().strip()
                        allow[(f / "allow").read_text().strip() == "Y"].append(kind)
                    kinds = " ".join(allow[True]) + (
                        f" (not {', '.join(allow[False])})" if allow[False] else ""
                    )
                    quota = int((sch / "quotas/bytes").read_text())
                    reset_ms = int((sch / "quotas/reset_interval_ms").read_text())
                    found.append(
                        f"DAMON `{action}` of {kinds or 'any'} pages idle for "
                        f"{age * aggr_us / 1e6:.0f} s or more"
                        + (f", up to {quota / 2**20:.0f} MiB per {reset_ms} ms" if quota else "")
                    )
        except (OSError, ValueError):
            continue
    return "; ".join(found) or None


def cached_share(paths: list[Path]) -> float:
    """The share of the files' pages in the kernel's page cache now (`mincore` over a map of
    each; the map is only looked at, so no page is read or kept)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    held = total = 0
    for p in paths:
        size = p.stat().st_size
        if not size:
            continue
        with p.open("rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
            pages = -(-size // mmap.PAGESIZE)
            vec = (ctypes.c_ubyte * pages)()
            view = np.frombuffer(m, dtype=np.uint8)
            try:
                if libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec):
                    raise OSError(ctypes.get_errno(), "mincore failed")
            finally:
                del view
            held += int((np.frombuffer(vec, dtype=np.uint8) & 1).sum())
            total += pages
    return held / total if total else float("nan")


def header(sections: list[str], load_start: tuple[float, float, float], minutes: float) -> str:
    """The Markdown header of BENCHMARKS.md: when, on what, with which versions."""
    c = cpu()
    end = load_average()
    mem = psutil.virtual_memory().total / 2**30
    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    isa = ", ".join(
        f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f in c.flags
    )
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "Generated by `make bench` (`python -m bench`); numbers are medians within one run, "
            "and every figure stands beside its baseline measured in the same run.",
            "",
            f"- **Date:** {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"- **CPU:** {c.model} (vendor {c.vendor}, family {c.family:#x}), "
            f"{c.physical_cores} physical cores / {c.logical_cpus} logical CPUs, "
            f"reported clock {c.mhz:.0f} MHz; ISA: {isa}",
            f"- **Memory:** {mem:.0f} GiB"
            + (f"; proactive reclaim: {reclaim}" if (reclaim := proactive_reclaim()) else ""),
            f"- **Load:** 1-minute load average {load_start[0]:.1f} at the start, {end[0]:.1f} "
            f"at the end of the {minutes:.0f}-minute run, on {c.logical_cpus} CPUs (the machine "
            "is shared: other work adds noise; ratios within one run are what count)",
            f"- **OS / Python:** {platform.platform()}, Python {sys.version.split()[0]}",
            f"- **Packages:** {versions}",
            f"- **Sections:** {', '.join(sections)}",
        ]
    )
