"""What a surrogate is fitted on: real trials with the space and trainer settings they ran under, read from a table
(CSV + its .json sidecar, as benchmarks/surrogate_data.py writes them) or from study journals, and the check that a
study asks only what the data covers."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from jaxhpo.journal import Journal, JournalError, TrialRecord
from jaxhpo.protocol import NOT_RUN_PREFIX
from jaxhpo.space import Space, SpaceError
from jaxhpo.trial import TrialConfig
from model.config import KEYS_ADDED, TrainConfig, get_field

REPO = Path(__file__).resolve().parents[2]
MIN_SUCCESSES = 10  # fewer ok trials than this fit nothing worth optimizing against
_ABSENT = object()


def _measured(key: str, settings: Mapping[str, Any]) -> bool:
    """Whether a trainer setting changes what a trial measures: all do, but the time budget under another unit
    (it only sets the timeout there)."""
    return not (key == "trial.time_budget_s" and settings.get("trial.budget") != "time")


class SurrogateError(ValueError):
    """Data a surrogate cannot be fitted on, or a study it does not cover; the message is one line."""


@dataclass
class Observations:
    """Real trials: `rows` (params, seed, status, val_bpb, wall_seconds, training_seconds) of the trials that ran,
    the space they cover, the flat trainer settings they ran under, where they came from and a hash of them."""

    rows: list[dict]
    space: Space
    trainer: dict
    source: str
    data_id: str

    @property
    def successes(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)


def resolve_path(path: str | Path) -> Path:
    """A relative path from the working directory, else from the repository (where the default table lives)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return REPO / path if (REPO / path).exists() else path


def _ran(status: str, error: str | None) -> bool:
    # Refused configurations never ran (a study refuses them again itself), nor did trials lost to their LLM.
    return not (status == "crashed" and (error or "").startswith(("refused:", NOT_RUN_PREFIX)))


def _observations(rows: list[dict], space: Space, trainer: dict, source: str) -> Observations:
    blob = json.dumps([rows, space.definition(), trainer], sort_keys=True, default=str)
    obs = Observations(rows, space, trainer, source, hashlib.sha256(blob.encode()).hexdigest()[:12])
    if obs.successes < MIN_SUCCESSES:
        raise SurrogateError(f"{source} holds {obs.successes} successful trials; a surrogate needs at least "
                             f"{MIN_SUCCESSES}: collect more (benchmarks/surrogate_data.py) or name other journals")
    return obs


def load_table(path: str | Path) -> Observations:
    """The trials of a CSV table and its sidecar (path with .json: the space and trainer settings)."""
    path = resolve_path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        raise SurrogateError(f"surrogate table {path} not found; write it with benchmarks/surrogate_data.py, or fit "
                             "on journals with surrogate.journals=[...]")  # fmt: skip
    try:
        meta = json.loads(sidecar.read_text())
        space = Space(meta.get("space_name", "table"), meta["space"])
        trainer = dict(meta["trainer"])
        with open(path, newline="") as f:
            rows = [_table_row(space, r) for r in csv.DictReader(f)]
    except FileNotFoundError:
        raise SurrogateError(f"surrogate table {path} has no sidecar {sidecar.name} (its space and trainer "
                             "settings); rewrite it with benchmarks/surrogate_data.py --table-only") from None
    except (OSError, ValueError, KeyError, TypeError, SpaceError, csv.Error) as e:
        what = f"{type(e).__name__}: {e}".splitlines()[0]
        raise SurrogateError(f"surrogate table {path} is corrupt ({what}); rewrite it with "
                             "benchmarks/surrogate_data.py --table-only") from None  # fmt: skip
    return _observations([r for r in rows if r is not None], space, trainer, str(path))


def _number(text: str) -> float | None:
    return None if text in ("", None) else float(text)


def _table_row(space: Space, r: Mapping[str, str]) -> dict | None:
    if not _ran(r["status"], r.get("error")):
        return None
    params = {}
    for p in space.params:
        text = r[p.name]
        params[p.name] = text if p.type == "categorical" else int(float(text)) if p.type == "int" else float(text)
    row = {"params": params, "seed": int(r["seed"]), "status": r["status"], "val_bpb": _number(r["val_bpb"]),
           "wall_seconds": float(r["wall_seconds"]), "training_seconds": _number(r["training_seconds"])}
    return _with_rungs(row, json.loads(r.get("rungs") or "[]"))


def record_row(t: TrialRecord) -> dict:
    """A table row of a journaled trial."""
    row = {"params": dict(t.params), "seed": t.seed, "status": t.status, "val_bpb": t.val_bpb,
           "wall_seconds": t.wall_seconds, "training_seconds": t.training_seconds}  # fmt: skip
    return _with_rungs(row, [(r["fraction"], r["value"]) for r in t.result.get("rungs", [])])


def _with_rungs(row: dict, rungs: Sequence) -> dict:
    """`row` with its learning curve, [(fraction, held-out bpb)], where the trial reported at rungs (a row without
    any hashes as before rungs were read, so the data's id stays)."""
    return {**row, "rungs": [(float(f), float(v)) for f, v in rungs]} if rungs else row


def load_journals(paths: Sequence[str | Path]) -> Observations:
    """The trials of study journals run under one set of trainer settings; their spaces are merged (each range
    the widest any journal searched)."""
    rows, spaces, trainer, source = [], [], None, ", ".join(str(p) for p in paths)
    for path in map(resolve_path, paths):
        if not path.is_file():
            raise SurrogateError(f"surrogate journal {path} not found")
        try:
            with Journal(path, readonly=True) as journal:
                info, trials = journal.study_info(), journal.trials()
        except JournalError as e:
            raise SurrogateError(f"surrogate journal {path}: {str(e).splitlines()[0]}") from None
        if "space" not in info or "trainer" not in info:
            raise SurrogateError(f"surrogate journal {path} records no space or trainer settings (a study from "
                                 "before they were journaled); rerun it")  # fmt: skip
        settings = {**KEYS_ADDED, **info["trainer"]}
        if trainer is not None and (diff := _first_difference(trainer, settings)):
            raise SurrogateError(f"surrogate journals ran under different trainer settings ({diff}); fit on "
                                 "journals of one setting")  # fmt: skip
        trainer = trainer or settings
        spaces.append(info["space"])
        rows += [record_row(t) for t in trials if _ran(t.status, t.error)]
    return _observations(rows, Space("journals", _merge_spaces(spaces)), trainer, source)


def _merge_spaces(definitions: Sequence[Mapping[str, Mapping]]) -> dict:
    merged: dict[str, dict] = {}
    for definition in definitions:
        for name, spec in definition.items():
            if name not in merged:
                merged[name] = dict(spec)
                continue
            m = merged[name]
            if spec.get("key") != m.get("key") or spec.get("type") != m.get("type"):
                raise SurrogateError(f"surrogate journals define {name} differently ({m.get('key')} vs "
                                     f"{spec.get('key')})")  # fmt: skip
            if m["type"] == "categorical":
                m["choices"] = [*m["choices"], *(c for c in spec["choices"] if c not in m["choices"])]
            else:
                m["low"], m["high"] = min(m["low"], spec["low"]), max(m["high"], spec["high"])
    return merged


def _first_difference(a: Mapping, b: Mapping) -> str | None:
    for key in sorted(set(a) | set(b)):
        if _measured(key, a) and a.get(key) != b.get(key):
            return f"{key}={a.get(key)!r} vs {b.get(key)!r}"
    return None


def base_configs(trainer: Mapping[str, Any]) -> tuple[TrainConfig, TrialConfig]:
    """The trainer and trial configuration the data's trials ran under, rebuilt from their flat settings."""
    conf = OmegaConf.structured(TrainConfig)
    for key, value in trainer.items():
        if not key.startswith("trial."):
            OmegaConf.update(conf, key, value, force_add=True)
    trial = TrialConfig(**{k.removeprefix("trial."): v for k, v in trainer.items() if k.startswith("trial.")})
    return OmegaConf.to_object(conf), trial


def check_covers(obs: Observations, space: Space, base: TrainConfig, trainer: Mapping[str, Any]) -> None:
    """Refuse a study the data does not cover: a space parameter the data never varied or a range beyond the
    data's, a fixed value outside it, or a trainer setting the data's trials did not run with."""
    covered = {p.key: p for p in obs.space.params}
    for p in space.params:
        q = covered.get(p.key)
        if q is None:
            raise SurrogateError(f"space parameter {p.name} sets {p.key}, which {obs.source} never varied; take it "
                                 "out of the space or collect data that varies it")  # fmt: skip
        outside = ([c for c in p.choices if c not in q.choices] if p.type == "categorical"
                   else [v for v in (p.low, p.high) if not q.low <= v <= q.high])  # fmt: skip
        if outside:
            raise SurrogateError(f"space parameter {p.name}: {outside[0]!r} is outside what {obs.source} covers "
                                 f"({_extent(q)}); narrow the space to it")  # fmt: skip
    searched = {p.key for p in space.params}
    for key, q in covered.items():
        value = get_field(base, key)
        if key not in searched and not q.contains(value):
            raise SurrogateError(f"{key}={value!r} is outside what {obs.source} covers ({_extent(q)})")
    for key, value in trainer.items():
        # a key added since the data was measured had the value KEYS_ADDED gives (the data's id stays as it was)
        measured = obs.trainer.get(key, KEYS_ADDED.get(key, _ABSENT))
        if key in covered or not _measured(key, trainer) or measured is _ABSENT:
            continue
        if measured != value:
            raise SurrogateError(f"{obs.source} was measured with {key}={measured!r}, not {value!r}; use "
                                 "that setting or fit on data measured with yours")  # fmt: skip


def _extent(p) -> str:
    return ", ".join(map(str, p.choices)) if p.type == "categorical" else f"{p.low}..{p.high}"
