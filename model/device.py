"""What the run knows about its device: compute dtype, memory limits, peak memory, peak FLOP/s, OOM errors.

The same trainer runs on GPU and CPU. On GPU: bf16 compute and an XLA memory fraction. On CPU: float32, and an
optional address-space limit (RLIMIT_AS) under which an XLA allocation past the limit raises the same
`RESOURCE_EXHAUSTED` error a GPU raises, so out-of-memory is a real, testable outcome on a laptop.
"""

from __future__ import annotations

import os
import resource

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s by device kind, for MFU (the figure autoresearch reports on an H100).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def configure_memory(memory_fraction: float, memory_limit_gb: float | None) -> str:
    """Apply the memory settings; returns the backend name. Call before the first JAX computation."""
    # XLA reads the fraction when the GPU client starts, which is the first call below.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(memory_fraction))
    backend = jax.default_backend()
    if backend == "cpu" and memory_limit_gb is not None:
        limit = int(memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return backend


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


def is_oom(exc: BaseException) -> bool:
    """True for an allocation failure: XLA's RESOURCE_EXHAUSTED, or the host refusing memory."""
    return isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc)
