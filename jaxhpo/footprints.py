"""The memory pre-flight's verdicts by shape, shared by every study that shares a compilation cache.

A trial's pre-flight (model.preflight) compiles its steps and compares XLA's memory analysis with the limit. The
verdict depends on the shapes alone -- the model, the batch, the optimizer's kind, the data, the dtype, the memory
settings and JAX's version -- not on the learning rates or the schedule, which are inputs of the compiled step. So
once one trial of a shape was predicted not to fit, every later configuration of that shape is known to fail: the
study finishes it as `oom` (predicted, from the cache) without starting a process, and the failure model of the
proposers (jaxhpo.feasibility) gives it p_fail = 1, so that they do not propose it at all.

The verdicts live in `footprints.sqlite` inside the study's compilation cache folder (trial.compile_cache_dir,
default <run dir>/xla_cache; JAX's cache only reads its own `*-cache` files): the studies of a grid that point
`trial.compile_cache_dir` at one folder share their verdicts as they share their programs. Only verdicts that a
shape does not fit are kept; what fits is learnt again at no cost beyond a cached compile. The cache is an
optimisation: a file that cannot be read or written is reported once and the study goes on without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable, Mapping

import jax

from model.config import TrainConfig

FILE = "footprints.sqlite"
# The optimizer's hyperparameters that are inputs of the compiled step (never constants of the program), so no
# part of its memory: everything else in the config counts towards a shape.
RUNTIME_OPTIM = ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "weight_decay", "warmup_ratio",
                 "warmdown_ratio", "final_lr_frac")  # fmt: skip


def shape_key(cfg: TrainConfig) -> str:
    """What the pre-flight's verdict on `cfg` depends on, hashed: equal keys, equal verdicts."""
    optim = {k: v for k, v in dataclasses.asdict(cfg.optim).items() if k not in RUNTIME_OPTIM}
    shape = {
        "model": dataclasses.asdict(cfg.model), "optim": optim, "data": dataclasses.asdict(cfg.data),
        "compute_dtype": cfg.compute_dtype, "memory": [cfg.memory_limit_gb, cfg.gpu_memory_fraction,
                                                       cfg.memory_fraction], "jax": jax.__version__,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:32]


class FootprintCache:
    """Shapes the pre-flight predicted not to fit, in a SQLite file (None: no cache, nothing is known)."""

    def __init__(self, path: str | Path | None, warn: Callable[[str], None] = print):
        self.path, self._warn = (Path(path) if path else None), warn

    def record(self, cfg: TrainConfig, result: Mapping[str, Any], trial: str) -> None:
        """Keep `result`'s verdict if its pre-flight (run by the trainer, not read from here) predicted it does not
        fit; `trial` says where it was seen."""
        footprint = result.get("preflight") or {}
        if not result.get("predicted") or footprint.get("fits", True):
            return
        row = (shape_key(cfg), json.dumps(dict(footprint, seen=trial)))
        self._run("INSERT OR REPLACE INTO footprints (key, footprint) VALUES (?, ?)", row)

    def predicted_oom(self, cfg: TrainConfig) -> dict | None:
        """The pre-flight's footprint of `cfg`'s shape if one was predicted not to fit, else None."""
        rows = self._run("SELECT footprint FROM footprints WHERE key = ?", (shape_key(cfg),))
        return json.loads(rows[0][0]) if rows else None

    def empty(self) -> bool:
        """Whether no shape is known not to fit (yet: studies sharing the file may add some at any time)."""
        return not self._run("SELECT 1 FROM footprints LIMIT 1", ())

    def _run(self, sql: str, args: tuple) -> list:
        if self.path is None:
            return []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30)  # studies of a grid write it at once: wait for the lock
            try:
                with conn:  # one transaction
                    conn.execute("CREATE TABLE IF NOT EXISTS footprints (key TEXT PRIMARY KEY, footprint TEXT NOT NULL)")
                    return conn.execute(sql, args).fetchall()
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as e:
            self._warn(f"warning: the pre-flight cache {self.path} is not usable ({e}); going on without it")
            self.path = None
            return []


def oom_message(footprint: Mapping[str, Any]) -> str:
    """The one-line error of a trial finished from the cache."""
    return (f"predicted out of memory (the pre-flight of {footprint.get('seen', 'an earlier trial')}, same shapes): "
            f"needs {footprint.get('predicted')} GiB > limit {footprint.get('limit')} GiB")  # fmt: skip
