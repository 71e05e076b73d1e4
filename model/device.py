"""What the run knows about its device: compute dtype, memory limits, peak memory, peak FLOP/s, OOM errors.

The same trainer runs on GPU and CPU. On GPU: bf16 compute and an XLA memory fraction. On CPU: float32, and an
optional address-space limit (RLIMIT_AS) under which an XLA allocation past the limit raises the same
`RESOURCE_EXHAUSTED` error a GPU raises, so out-of-memory is a real, testable outcome on a laptop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import shutil
import subprocess

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s by device kind, for MFU (the figure autoresearch reports on an H100).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def configure_memory(memory_fraction: float, memory_limit_gb: float | None,
                     gpu_memory_fraction: float | None = None) -> str:  # fmt: skip
    """Apply the memory settings; returns the backend name. Call before the first JAX computation.

    memory_limit_gb caps the run on either device: on GPU it replaces memory_fraction by limit / device memory
    (the original's 76 GB on an 80 GB H100 is a fraction of 0.95, above the 0.9 default); on CPU it is an
    address-space limit. gpu_memory_fraction, when given, is the GPU's share whatever memory_limit_gb says (the
    study capped its H200 at 0.543, about 76 GB), so one setting can cap a GPU by share and a CPU by size.
    """
    gpu_total = _gpu_memory_bytes()
    if gpu_total and gpu_memory_fraction is not None:
        memory_fraction = gpu_memory_fraction
    elif gpu_total and memory_limit_gb is not None:
        memory_fraction = min(1.0, memory_limit_gb * 2**30 / gpu_total)
    # XLA reads the fraction when the GPU client starts, which is the first call below.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{memory_fraction:.4f}")
    backend = jax.default_backend()
    if backend == "cpu" and memory_limit_gb is not None:
        limit = int(memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return backend


# glibc's malloc options (mallopt) and the size up to which freed host memory stays in the process: blocks above
# the mmap threshold (dynamic, at most 32 MB by default) are mapped on allocation and unmapped when freed, so every
# step's large temporaries (logits, attention scores, gradients) were page-faulted afresh; on XLA:CPU a pass over a
# 32 MB array took 3 to 5 times as long as over reused memory. Measured by benchmarks/train_throughput.py.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_HOST_BYTES = 256 * 2**20


def keep_freed_host_memory() -> bool:
    """Let glibc reuse freed blocks of up to KEPT_HOST_BYTES instead of returning them to the system; True when
    applied (False on a C library without mallopt). Process-wide: a CPU run's buffers live in host memory."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return all(libc.mallopt(option, KEPT_HOST_BYTES) == 1 for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))


def _gpu_memory_bytes() -> int | None:
    """Memory of the first visible NVIDIA GPU, asked of nvidia-smi so that JAX's GPU client is not started."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    index = int(visible) if visible.isdigit() and int(visible) < len(out) else 0
    return int(out[index]) * 2**20 if out else None  # nvidia-smi reports MiB


def enable_compile_cache(path: str | None) -> dict[str, int]:
    """Use (and fill) the persistent compilation cache at `path`, which processes may share; returns counters of
    this process's cache hits and misses, updated as it compiles. Call before the first compilation."""
    counts = {"hits": 0, "misses": 0}
    if not path:
        return counts
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program: the tiny model's steps compile in a second or two, and still that is most of a short trial.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if jax.default_backend() == "cpu":
        # Off a GPU there is no autotuning to cache; left on, its folder (inside `path`) enters every cache key,
        # so a cache copied or named by another path would never hit.
        jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    events = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}

    def count(event: str, **_) -> None:
        if event in events:
            counts[events[event]] += 1

    jax.monitoring.register_event_listener(count)
    return counts


def compute_dtype(name: str):
    """The jnp dtype for a config value: auto = bfloat16 on GPU, float32 elsewhere."""
    if name == "auto":
        name = "bfloat16" if jax.default_backend() == "gpu" else "float32"
    return jnp.dtype(name)


def peak_memory_bytes() -> int:
    """Peak device memory on GPU (XLA's allocator), else the process's peak resident set."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_flops() -> float | None:
    """The device's dense bf16 peak FLOP/s if known (GPU), else None."""
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in kind), None)


# XLA's words for a refused allocation: RESOURCE_EXHAUSTED, or XLA:CPU's INTERNAL "Out of memory allocating <N>
# bytes" when a program's buffers are allocated as it is dispatched.
XLA_OOM_MESSAGES = ("RESOURCE_EXHAUSTED", "Out of memory allocating")
# ... and in a process's output: C++'s std::bad_alloc aborts the process when it is thrown on one of XLA's own
# threads (compiling a large step under the address-space limit, for one), before any result is written.
OOM_LOG_MESSAGES = (*XLA_OOM_MESSAGES, "std::bad_alloc")


def oom_in_log(text: str) -> bool:
    """True when a process's output says it was refused memory (OOM_LOG_MESSAGES)."""
    return any(s in text for s in OOM_LOG_MESSAGES)


def is_oom(exc: BaseException) -> bool:
    """True for an allocation failure: XLA_OOM_MESSAGES, or the host refusing memory. Under an address-space
    limit, also XLA:CPU's YNNPACK kernels failing: they report a refused allocation only as "YNNPACK operation
    failed" (after printing "allocate of <N> failed")."""
    if isinstance(exc, MemoryError) or any(s in str(exc) for s in XLA_OOM_MESSAGES):
        return True
    limited = resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY
    return limited and "YNNPACK operation failed" in str(exc)
