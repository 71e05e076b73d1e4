"""Stopping hopeless trials early: `study.pruner=none|median|asha`.

A trial of the built-in trainer reports at rungs, fractions of its budget (`study.pruner_rungs`; in the budget's
own unit, so under a FLOP budget a rung falls at the same step whatever the machine's load): at each it scores
the first quarter of the held-out set (a cheap val_bpb) and appends a line to `rungs.jsonl` in its folder
(`model.progress.Rungs`). While the trial runs, the study reads those lines (`Pruner.watch`) and asks the pruner;
a trial it stops is killed and journaled as `pruned` -- its own outcome, with the rung, the value and the reason --
charged the wall time it ran, and told to the proposers as a failure, ranked behind every success. The failure
model (`jaxhpo.feasibility`) counts it as a configuration that ran: being slow to learn is not being infeasible.

- `median` (Optuna's MedianPruner): at a rung, stop a trial whose value is worse than the median of the values
  the trials that finished ok had there, once `min_trials` of them have.
- `asha` (asynchronous successive halving, as Optuna's SuccessiveHalvingPruner): rungs at eta^-k of the budget
  (1/9 and 1/3 for eta = 3); at a rung, a trial goes on only while its value is among the best max(1, n // eta)
  of the n trials that have reached it (itself, pruned and running trials included), once `min_trials` have.

A rung's values are read back from the journal on resume (each trial's result keeps its `rungs`), so a resumed
study prunes as the uninterrupted one would. With one worker the decisions depend only on the values, not on
timing: the trial trains on for at most a poll interval after its report, which changes its wall time only.
"""

from __future__ import annotations

import json
import statistics
import threading
from pathlib import Path
from typing import Callable

from jaxhpo.journal import TrialRecord
from model.progress import RUNGS_FILE

PRUNERS = ("none", "median", "asha")
DEFAULT_RUNGS = {"median": (0.25, 0.5, 0.75)}  # asha's are eta^-k (`asha_rungs`)


def asha_rungs(eta: int, n: int = 2) -> tuple[float, ...]:
    """Successive halving's rungs below the full budget: eta^-n, ..., eta^-1."""
    return tuple(eta**-k for k in range(n, 0, -1))


class Pruner:
    """Decides at each rung report whether a trial goes on; `watch` reads a running trial's reports. Thread-safe:
    the study's workers report concurrently. The settings are checked with the study's (jaxhpo.config)."""

    def __init__(self, name: str, rungs: list[float] | None = None, min_trials: int = 5, eta: int = 3):
        self.name, self.min_trials, self.eta = name, min_trials, eta
        default = asha_rungs(eta) if name == "asha" else DEFAULT_RUNGS.get(name, ())
        self.rungs: tuple[float, ...] = tuple(rungs) if rungs is not None and name != "none" else default
        self._values: dict[int, dict[int, float]] = {}  # rung -> trial number -> value
        self._ok: set[int] = set()  # trials that finished ok (median compares with those)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.name != "none"

    def settings(self) -> dict:
        """What the study records and a resume must match, by the keys that set it."""
        if not self.active:
            return {"study.pruner": "none"}
        return {"study.pruner": self.name, "study.pruner_rungs": list(self.rungs),
                "study.pruner_min_trials": self.min_trials, "study.pruner_eta": self.eta}  # fmt: skip

    def tell(self, trial: TrialRecord) -> None:
        """A finished trial (also one read back on resume): its rung values, and whether it finished ok."""
        with self._lock:
            for r in trial.result.get("rungs", []):
                self._values.setdefault(r["rung"], {})[trial.number] = r["value"]
            if trial.status == "ok":
                self._ok.add(trial.number)

    def report(self, number: int, rung: int, value: float) -> str | None:
        """Record trial `number`'s value at `rung` (lower is better); why it must stop there, or None to go on."""
        with self._lock:
            values = self._values.setdefault(rung, {})
            values[number] = value
            if self.name == "median":
                done = [v for n, v in values.items() if n in self._ok and n != number]
                if len(done) >= self.min_trials and value > (median := statistics.median(done)):
                    return f"worse than the median {median:.4f} of {len(done)} finished trials there"
            elif self.name == "asha" and len(values) >= self.min_trials:
                keep = max(1, len(values) // self.eta)
                if sorted(values.values()).index(value) >= keep:
                    return f"not among the best {keep} of the {len(values)} trials that reached it"
        return None

    def watch(self, number: int, trial_dir: Path) -> Callable[[], dict | None]:
        """A check the trial's runner calls while it runs: the report that stops it (with `reason` and every report
        so far under `rungs`), or None."""
        path, seen = Path(trial_dir) / RUNGS_FILE, []

        def check() -> dict | None:
            for report in _complete_lines(path)[len(seen):]:
                seen.append(report)
                if (why := self.report(number, report["rung"], report["value"])) is not None:
                    step = "" if report["step"] is None else f", step {report['step']}"
                    reason = (f"pruned at rung {report['rung']} ({report['fraction']:.0%} of the budget{step}): "
                              f"held-out bpb {report['value']:.4f}, {why}")  # fmt: skip
                    return {**report, "reason": reason, "rungs": list(seen)}
            return None

        return check


def _complete_lines(path: Path) -> list[dict]:
    """The reports in `path` so far: whole lines only, since the trainer may be writing the next one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line]
