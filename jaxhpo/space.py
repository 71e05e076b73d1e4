"""Search spaces: typed hyperparameters, their unit-cube encoding, and a stable id.

A space is a mapping from hyperparameter names (autoresearch's UPPER_CASE names) to typed ranges, each with a
default and the trainer config key it sets. Proposers work in the unit cube [0, 1]^d: floats map linearly or
logarithmically; integers, powers of two and categoricals own equal slices of [0, 1], one per value, so a
uniform point in the cube is a uniform draw over each parameter's values. Under `protocol.pow2_prior=log_snap`
(the study's prior) a power of two's slice is instead as wide as the share of a log-uniform integer over
[low - 0.5, high + 0.5] that rounds and snaps to it (nearest power of two, ties to the lower): HEAD_DIM 64-256
draws 64, 128, 256 with probabilities 0.30, 0.50, 0.21, what ConfigSpace's sampler followed by the study's snap
gives.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, List, Mapping, Optional

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

TYPES = ("float", "int", "categorical")
POW2_PRIORS = ("uniform", "log_snap")


class SpaceError(ValueError):
    """A space definition or a configuration that does not fit it; one line saying what and how to fix it."""


@dataclass
class ParamSpec:
    """One hyperparameter, as written in a space YAML file (hydra_configs/space/)."""

    type: str = MISSING  # float | int | categorical
    key: str = MISSING  # the trainer config key it sets, e.g. model.depth
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False  # sample the logarithm uniformly
    pow2: bool = False  # int: only powers of two
    choices: Optional[List[str]] = None  # categorical
    default: Any = None


@dataclass
class SpaceConfig:
    """The `space/` config group: a name and the parameters by name."""

    name: str = MISSING
    params: dict[str, ParamSpec] = field(default_factory=dict)


ConfigStore.instance().store(group="space", name="space_schema", node=SpaceConfig)


@dataclass(frozen=True)
class Param:
    """A validated hyperparameter with its encoding to and from [0, 1]."""

    name: str
    type: str
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    pow2: bool = False
    choices: tuple = ()
    default: Any = None
    prior: str = "uniform"  # pow2 only: "uniform" (equal slices) or "log_snap" (see the module docstring)

    @property
    def levels(self) -> tuple | None:
        """The finite list of values for ints on a linear or power-of-two grid and for categoricals."""
        if self.type == "categorical":
            return self.choices
        if self.type == "int" and self.pow2:
            return tuple(2**k for k in range(int(math.log2(self.low)), int(math.log2(self.high)) + 1))
        if self.type == "int" and not self.log:
            return tuple(range(int(self.low), int(self.high) + 1))
        return None

    @property
    def edges(self) -> tuple | None:
        """The boundaries in [0, 1] of the levels' slices (len(levels) + 1 of them), None without levels."""
        levels = self.levels
        if levels is None:
            return None
        if self.prior != "log_snap":
            return tuple(i / len(levels) for i in range(len(levels) + 1))
        # Integers from just above 0.75 * 2^k up to 1.5 * 2^k snap to 2^k; the log-uniform draw over
        # [low - 0.5, high + 0.5] rounds to integer v on [v - 0.5, v + 0.5].
        first = [self.low] + [int(0.75 * v) + 1 for v in levels[1:]]
        start, span = math.log(self.low - 0.5), math.log(self.high + 0.5) - math.log(self.low - 0.5)
        return tuple((math.log(v - 0.5) - start) / span for v in first) + (1.0,)

    def to_unit(self, value) -> float:
        edges = self.edges
        if edges is not None:
            i = self.levels.index(value)
            return (edges[i] + edges[i + 1]) / 2
        lo, hi, x = (math.log(self.low), math.log(self.high), math.log(value)) if self.log else (
            self.low, self.high, float(value))
        return (x - lo) / (hi - lo)

    def from_unit(self, u: float):
        u = min(max(float(u), 0.0), 1.0)
        levels = self.levels
        if levels is not None:
            i = int(u * len(levels)) if self.prior != "log_snap" else bisect.bisect_right(self.edges, u) - 1
            return levels[min(i, len(levels) - 1)]
        x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))) if self.log else (
            self.low + u * (self.high - self.low))
        x = min(max(x, self.low), self.high)  # exp(log(high)) can overshoot high by a rounding error
        return int(round(x)) if self.type == "int" else x

    def contains(self, value) -> bool:
        levels = self.levels
        if levels is not None:
            return value in levels
        if self.type == "int" and (isinstance(value, bool) or not float(value).is_integer()):
            return False
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def clamp(self, value) -> Any:
        """The nearest valid value to `value` (numbers clipped and snapped; unknown categories -> default)."""
        if self.type == "categorical":
            return value if value in self.choices else self.default
        x = min(max(float(value), self.low), self.high)
        if self.pow2:
            return 2 ** round(math.log2(x))
        return int(round(x)) if self.type == "int" else x


def _param(name: str, spec: Mapping, pow2_prior: str = "uniform") -> Param:
    spec = dict(spec)
    kind, key = spec.get("type"), spec.get("key")
    where = f"space parameter {name}"
    if kind not in TYPES:
        raise SpaceError(f"{where}: type={kind!r}; use one of {', '.join(TYPES)}")
    if not key or not isinstance(key, str):
        raise SpaceError(f"{where}: give the trainer config key it sets, e.g. key: model.depth")
    if kind == "categorical":
        choices = tuple(spec.get("choices") or ())
        if len(choices) < 1 or len(set(choices)) != len(choices):
            raise SpaceError(f"{where}: categorical needs a non-empty list of distinct choices")
        p = Param(name, kind, key, choices=choices, default=spec.get("default", choices[0]))
    else:
        low, high = spec.get("low"), spec.get("high")
        if low is None or high is None:
            raise SpaceError(f"{where}: {kind} needs low and high")
        if not low < high:
            raise SpaceError(f"{where}: low={low} must be below high={high}")
        log, pow2 = bool(spec.get("log")), bool(spec.get("pow2"))
        if (log or pow2) and low <= 0:
            raise SpaceError(f"{where}: a log or power-of-two range needs low > 0, got low={low}")
        if pow2 and (kind != "int" or not all(math.log2(v).is_integer() for v in (low, high))):
            raise SpaceError(f"{where}: pow2 needs an int range whose low and high are powers of two")
        if kind == "int":
            low, high = int(low), int(high)
        default = spec.get("default")
        p = Param(name, kind, key, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                  log, pow2, default=default, prior=spec.get("prior", pow2_prior) if pow2 else "uniform")
        if p.prior not in POW2_PRIORS:
            raise SpaceError(f"{where}: prior={p.prior!r}; use one of {', '.join(POW2_PRIORS)}")
    if p.default is None or not p.contains(p.default):
        raise SpaceError(f"{where}: default={p.default!r} is not a valid value of its range")
    return p


class Space:
    """An ordered set of hyperparameters; proposers see it as the unit cube [0, 1]^dim."""

    def __init__(self, name: str, params: Mapping[str, Mapping], pow2_prior: str = "uniform"):
        if not params:
            raise SpaceError(f"space {name!r} has no parameters")
        if pow2_prior not in POW2_PRIORS:
            raise SpaceError(f"unknown pow2 prior {pow2_prior!r}; choose one of: {', '.join(POW2_PRIORS)}")
        self.name = name
        self.params = tuple(_param(n, spec, pow2_prior) for n, spec in params.items())
        self.names = tuple(p.name for p in self.params)
        self.dim = len(self.params)
        keys = [p.key for p in self.params]
        if len(set(keys)) != len(keys):
            raise SpaceError(f"space {name!r}: two parameters set the same config key")

    @classmethod
    def from_config(cls, cfg, pow2_prior: str = "uniform") -> "Space":
        """Build from a SpaceConfig or any mapping {name, params}; `pow2_prior` is protocol.pow2_prior."""
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        elif not isinstance(cfg, Mapping):
            cfg = asdict(cfg)
        return cls(cfg["name"], cfg["params"], pow2_prior)

    @classmethod
    def from_file(cls, path, pow2_prior: str = "uniform") -> "Space":
        """Build from a space YAML file such as hydra_configs/space/autoresearch.yaml, outside Hydra (its defaults
        list, which names the schema, is not part of the space)."""
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        cfg.pop("defaults", None)
        return cls.from_config(cfg, pow2_prior)

    def definition(self) -> dict:
        """The space as plain data: what `space_id` hashes and what a prompt or the journal shows (the uniform
        prior left out, so spaces defined before the prior was a choice keep their ids)."""
        return {
            p.name: {k: v for k, v in asdict(p).items()
                     if k != "name" and v is not None and v is not False and v != () and (k, v) != ("prior", "uniform")}
            for p in self.params
        }  # fmt: skip

    @property
    def space_id(self) -> str:
        """A stable hash of the definition: equal spaces, equal ids, on any machine."""
        return definition_id(self.definition())

    def default(self) -> dict:
        return {p.name: p.default for p in self.params}

    def to_unit(self, config: Mapping) -> np.ndarray:
        self.check(config)
        return np.array([p.to_unit(config[p.name]) for p in self.params])

    def from_unit(self, u) -> dict:
        u = np.asarray(u, dtype=float)
        if u.shape != (self.dim,):
            raise SpaceError(f"expected a point of dimension {self.dim}, got shape {u.shape}")
        return {p.name: plain(p.from_unit(x)) for p, x in zip(self.params, u)}

    def around(self, config: Mapping, radius: float) -> dict:
        """The definition of the sub-space within `radius` of `config` in unit coordinates (a log range shrinks by
        a factor, not a difference), each default at `config`'s value; a numeric range keeps at least two values,
        categoricals keep every choice."""
        out = self.definition()
        for p in self.params:
            if p.type == "categorical":
                continue
            u = p.to_unit(p.clamp(config[p.name]))
            low, high = p.from_unit(u - radius), p.from_unit(u + radius)
            levels = p.levels
            if levels is not None and low == high:  # one level: widen to its neighbour inside the range
                i = levels.index(low)
                low, high = (levels[i - 1], low) if i == len(levels) - 1 else (low, levels[i + 1])
            out[p.name] = {**out[p.name], "low": plain(low), "high": plain(high),
                           "default": plain(min(max(p.clamp(config[p.name]), low), high))}  # fmt: skip
        return out

    def sample(self, rng: np.random.Generator) -> dict:
        """A uniform draw from the unit cube, decoded."""
        return self.from_unit(rng.random(self.dim))

    def check(self, config: Mapping) -> None:
        """Raise SpaceError unless `config` names exactly this space's parameters, each within its range."""
        unknown = sorted(set(config) - set(self.names))
        if unknown:
            raise SpaceError(f"unknown parameter {unknown[0]!r}; this space has: {', '.join(self.names)}")
        missing = [n for n in self.names if n not in config]
        if missing:
            raise SpaceError(f"missing parameter {missing[0]!r}")
        for p in self.params:
            if not p.contains(config[p.name]):
                raise SpaceError(f"{p.name}={config[p.name]!r} is outside its range")

    def clamp(self, config: Mapping) -> tuple[dict, list[str]]:
        """The nearest valid configuration and a note per change: unknown names dropped, missing ones
        defaulted, values clipped to bounds and snapped to the grid."""
        notes = [f"dropped unknown parameter {n}" for n in sorted(set(config) - set(self.names))]
        out = {}
        for p in self.params:
            if p.name not in config:
                out[p.name] = p.default
                notes.append(f"{p.name} missing: used default {p.default!r}")
                continue
            raw = config[p.name]
            try:
                value = plain(p.clamp(raw))
            except (TypeError, ValueError):
                value = p.default
            if value != raw:
                notes.append(f"{p.name}: {raw!r} -> {value!r}")
            out[p.name] = value
        return out, notes

    def overrides(self, config: Mapping) -> dict[str, Any]:
        """Trainer config key -> value for a configuration of this space."""
        return {p.key: config[p.name] for p in self.params}


def plain(x):
    """numpy scalars -> Python numbers, so configurations serialize to JSON and compare equal."""
    return x.item() if isinstance(x, np.generic) else x


def definition_id(definition: Mapping[str, Mapping]) -> str:
    """The id of a space definition (Space.definition()): a stable hash, equal on any machine."""
    blob = json.dumps(definition, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def box_id(definition: Mapping[str, Mapping]) -> str:
    """The id of the search box a definition spans, whatever prior it draws powers of two with: the space_id of
    the same definition under the uniform prior. Studies that differ only in protocol.pow2_prior search one box."""
    return definition_id({name: {k: v for k, v in spec.items() if k != "prior"} for name, spec in definition.items()})
