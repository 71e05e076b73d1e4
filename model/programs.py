"""Compiled programs (a run's initialization, train step and eval step) kept on disk under a key of what they
compute, so that a run whose programs match an earlier run's loads them without tracing or lowering anything.

XLA's persistent cache (`device.enable_compile_cache`) is keyed by the lowered program, so every run still traces
and lowers its train step before it can look there: about half a second at model=tiny, more than loading the
program. This cache is keyed by the run's configuration instead, less the settings that never reach a program
as constants (`PROGRAM_INPUTS`: the seed and the optimizer's numbers are inputs of the initialization and then
arrays in the optimizer state, the budget decides which data and how many steps, not the step), plus everything
else the programs depend on: the tokenizer's byte lengths (the eval step's constant), the trainer's source, JAX's
version and settings, XLA's flags and the devices. A key misses whenever any of that differs, so it can only be
too cautious, never stale; a test lowers the programs with the settings of `PROGRAM_INPUTS` changed and checks
they are the same.

Beside the programs the cache keeps the initial parameters, under the same key and the seed (`arrays`): they are
the initialization program's output, a function of the key and the seed alone, and reading them back is faster
than loading the program that draws them (0.02 s against 0.13 s at model=tiny, whose every random draw is a
threefry program of its own). They are kept once a run loaded that program from here, so only for shapes a study
comes back to (a random search rarely does, and the parameters are as large as all four programs together at
model=tiny), and only up to ARRAYS_MAX_BYTES; others are drawn again.

Entries live beside XLA's under `compile_cache_dir`, written whole and renamed, so concurrent runs share them; an
entry that cannot be read is compiled again. Only a program compiled in this run is stored: one that XLA's
persistent cache handed back is itself a loaded copy, and jaxlib 0.10's XLA:CPU serializes such a copy without
all of its code (the copy loads, then fails to run: "NOT_FOUND: Function add_select_fusion.5 not found").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Callable

import jax
import jaxlib
from jax.experimental import serialize_executable

from model.config import TrainConfig
from model.optim import NUMBERS

# Settings that reach the compiled steps only as array inputs, or not at all: runs that differ only in these share
# their programs. The memory settings stay in the key: a GPU compiler may schedule for the memory it is given.
PROGRAM_INPUTS = frozenset({
    *(f"optim.{name}" for name in NUMBERS),
    "seed", "budget", "time_budget_s", "budget_flops", "budget_tokens", "max_steps", "model.eval_tokens",
    "save_checkpoint", "log_every_s", "preflight", "compile_cache_dir", "rungs",
})  # fmt: skip
FOLDER = "jaxhpo-programs"
# model=small's parameters are 29 MB; gpt50m's are 0.2 GB a shape and seed, for trials of minutes where 0.1 s is
# nothing
ARRAYS_MAX_BYTES = 64 * 2**20


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _source_digest() -> str:
    """The trainer's own code (this folder), which the steps are traced from: an edited copy has its own."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def program_key(cfg: TrainConfig, compute_dtype, corpus_key: str) -> str:
    """The key of `cfg`'s compiled steps (see the module's docstring for what it holds)."""
    settings = {k: v for k, v in _flat(dataclasses.asdict(cfg)).items() if k not in PROGRAM_INPUTS}
    parts = {
        "settings": settings, "compute_dtype": str(compute_dtype), "corpus": corpus_key, "source": _source_digest(),
        "jax": [jax.__version__, jaxlib.__version__],
        "jax_config": [jax.config.jax_enable_x64, str(jax.config.jax_default_matmul_precision)],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "devices": [(d.platform, d.device_kind) for d in jax.devices()],
    }  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ProgramCache:
    """Compiled programs of one run under `root/FOLDER/<key>-<name>.pkl`; `root` None: nothing is kept.
    `xla_counts`: the counters of XLA's persistent cache (`device.enable_compile_cache`), which tell a program
    compiled here from one XLA's cache loaded."""

    def __init__(self, root: str | Path | None, key: str, xla_counts: dict[str, int]):
        self.folder = Path(root).expanduser() / FOLDER if root else None
        self.key, self.xla_counts = key, xla_counts
        self.hits = self.misses = 0
        self.loaded: set[str] = set()  # the programs read from here rather than compiled

    def _path(self, name: str) -> Path | None:
        return self.folder / f"{self.key}-{name}.pkl" if self.folder else None

    def _read(self, name: str, load: Callable[[object], object]):
        """`load` of the entry `name`'s unpickled payload, counted as a hit; None when there is none or it cannot be
        read (a torn entry, or a foreign one: another jaxlib's program), which the caller computes again."""
        path = self._path(name)
        if path is None or not path.exists():
            return None
        try:
            with open(path, "rb") as f:
                value = load(pickle.load(f))
        except Exception:  # noqa: BLE001 -- any unreadable entry is computed again
            return None
        self.hits += 1
        return value

    def get(self, name: str, lower: Callable[[], jax.stages.Lowered]) -> jax.stages.Compiled:
        """The program `name`: loaded when cached, else `lower()` compiled (and cached)."""
        compiled = self._read(name, lambda payload: serialize_executable.deserialize_and_load(*payload))
        if compiled is not None:
            self.loaded.add(name)
            return compiled
        xla_hits = self.xla_counts.get("hits", 0)
        compiled = lower().compile()
        self.misses += 1
        path = self._path(name)
        if path is not None and self.xla_counts.get("hits", 0) == xla_hits:
            _write(path, lambda: serialize_executable.serialize(compiled))
        return compiled

    def arrays(self, name: str):
        """The arrays kept as `name` (host copies), or None. Found, they count as a hit: they stand for the program
        that computes them, whose `get` counts otherwise."""
        return self._read(name, lambda tree: tree)

    def keep_arrays(self, name: str, tree) -> None:
        """Keep `tree`'s arrays as `name`, when they are no larger than ARRAYS_MAX_BYTES."""
        path = self._path(name)
        if path is not None and sum(x.nbytes for x in jax.tree.leaves(tree)) <= ARRAYS_MAX_BYTES:
            _write(path, lambda: jax.device_get(tree))

    def counts(self) -> dict[str, int]:
        """Hits and misses so far."""
        return {"hits": self.hits, "misses": self.misses}


def _write(path: Path, payload: Callable[[], object]) -> None:
    """Pickle `payload()` to `path` whole (written aside, then renamed): readers never see half an entry."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(payload(), f)
        tmp.replace(path)
    except (OSError, pickle.PicklingError, TypeError, ValueError):
        pass  # a cache that cannot be written costs the next run a compile, nothing else
