"""Memory pre-flight: predict a run's peak memory from XLA's compiled memory analysis, before any parameter exists.

The trainer compiles its train and eval steps against abstract shapes (`jax.ShapeDtypeStruct`s) first. XLA's
buffer assignment then knows every buffer the steps need: arguments, outputs (less those aliased to donated
arguments) and temporaries, and its peak. The run's device peak is the larger of

    train step:  its peak (parameters, optimizer state and batch in, their updates out, activations between)
    evaluation:  the optimizer state (still alive while evaluating) + the eval step's peak

On a GPU that is compared with the allocator's limit (the memory fraction). On a CPU the limit is an address-space
limit (RLIMIT_AS) on the whole process, which already holds the Python and XLA runtime, the corpus and thread
stacks when the check runs: their size (VmSize, read at the check) plus `HOST_RESERVE_BYTES` plus the device peak
is compared with the limit. The reserve stands for the address space still to come (the input pipeline's threads
and their malloc arenas, XLA's CPU thread pools) less the heap the compiler freed, which is inside VmSize and which
XLA's buffers reuse. Calibrated against real runs under the limit (`benchmarks/preflight_calibration.py`: 24
shapes at 3 GB, figures in the README), the two cancel: with 0 every prediction was right, with 256 MB or more a
configuration that fits was refused.

A run predicted not to fit ends as `oom` with `predicted: true` and has cost only the compilation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import jax
import numpy as np

# Address space a CPU run still takes after the check, besides the device peak, net: see the module docstring.
HOST_RESERVE_BYTES = 0


class PredictedOOM(MemoryError):
    """The pre-flight predicts the run exceeds its memory limit."""


@dataclass(frozen=True)
class Footprint:
    """What the pre-flight predicts (bytes)."""

    train_peak: int  # the compiled train step's peak
    eval_peak: int  # optimizer state + the compiled eval step's peak
    state: int  # parameters + optimizer state
    host: int  # CPU only: the process's address space at the check + HOST_RESERVE_BYTES; 0 on GPU
    limit: int | None  # the bytes the run may use, None without a limit

    @property
    def predicted(self) -> int:
        return self.host + max(self.train_peak, self.eval_peak)

    @property
    def fits(self) -> bool:
        return self.limit is None or self.predicted <= self.limit

    def as_dict(self) -> dict:
        gib = {k: round(v / 2**30, 3) if v is not None else None for k, v in asdict(self).items()}
        return {**gib, "predicted": round(self.predicted / 2**30, 3), "fits": self.fits}

    def message(self) -> str:
        return (
            f"predicted out of memory: needs {self.predicted / 2**30:.2f} GiB (train step {self.train_peak / 2**30:.2f}, "
            f"eval {self.eval_peak / 2**30:.2f}, process {self.host / 2**30:.2f}) > limit {self.limit / 2**30:.2f} GiB"
        )


def compiled_peak(compiled: jax.stages.Compiled) -> int:
    """Peak bytes of a compiled computation, from XLA's buffer assignment: arguments, outputs not aliased to a
    donated argument, and the temporaries, which XLA allocates as one block (buffers reused within it).

    Not `peak_memory_in_bytes`: on the CPU backend it reports the arguments alone (30 MB for a step whose
    temporaries take 1.6 GB), and the run then fails allocating that block."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


def tree_bytes(tree) -> int:
    """Bytes of every array (or ShapeDtypeStruct) leaf of a pytree."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def footprint(train_step: jax.stages.Compiled, eval_step: jax.stages.Compiled, params, opt_state,
              limit: int | None) -> Footprint:  # fmt: skip
    """The prediction for a run whose steps are compiled and whose (abstract) state is `params`, `opt_state`."""
    on_cpu = jax.default_backend() == "cpu"
    opt_bytes = tree_bytes(opt_state)
    return Footprint(
        train_peak=compiled_peak(train_step),
        eval_peak=opt_bytes + compiled_peak(eval_step),
        state=tree_bytes(params) + opt_bytes,
        host=address_space_bytes() + HOST_RESERVE_BYTES if on_cpu else 0,
        limit=limit,
    )


def memory_limit_bytes(memory_limit_gb: float | None) -> int | None:
    """The limit the run is held to: the allocator's on a GPU (memory fraction applied), the address-space
    limit on a CPU; None when there is none."""
    stats = jax.devices()[0].memory_stats() or {}
    if jax.default_backend() != "cpu" and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return int(memory_limit_gb * 2**30) if memory_limit_gb is not None else None


def address_space_bytes() -> int:
    """This process's virtual memory size (VmSize), what RLIMIT_AS limits."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0
