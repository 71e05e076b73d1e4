"""The study's live status line in a terminal: trials done and started, the best so far with its trial and proposer,
the budget spent and left, and the running trials with how long each has run (re-drawn by rich several times a
second, so the times move while trials train). Off a terminal rich draws nothing; the one line per finished trial
that the study prints stays the record there."""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

from rich.text import Text

from jaxhpo.journal import PendingTrial, TrialRecord


class LiveStatus:
    """A rich renderable over the study's own state (read, never changed): `history` and `running` as the loop keeps
    them, `spent()` the budget charged so far; `doing` says what the study is doing besides training."""

    def __init__(self, history: Sequence[TrialRecord], running: Mapping[int, PendingTrial], max_trials: int,
                 budget_s: float | None, spent: Callable[[], float], clock: Callable[[], float] = time.time,
                 sign: float = 1.0):  # fmt: skip
        self.history, self.running, self.max_trials, self.budget_s = history, running, max_trials, budget_s
        self.sign = sign  # -1: the history holds a maximized metric negated
        self.spent, self.clock = spent, clock
        self.doing = ""
        self._seen: dict[int, float] = {}  # when each running trial was first seen running (a rerun's too)

    def text(self) -> str:
        # Copies first: rich draws from its own thread while the study's loop changes both (each copy is atomic).
        history, running = list(self.history), dict(self.running)
        done, started = len(history), len(history) + len(running)
        parts = [f"{done}/{self.max_trials} done, {started} started"]
        ok = [t for t in history if not t.failed]
        if ok:
            best = min(ok, key=lambda t: t.val_bpb)
            parts.append(f"best {self.sign * best.val_bpb:.4f} (trial {best.number}, {best.proposer})")
        spent = self.spent()
        parts.append(f"budget {spent:.0f}s of {self.budget_s:.0f}s, {max(0.0, self.budget_s - spent):.0f}s left"
                     if self.budget_s else f"{spent:.0f}s of trials")  # fmt: skip
        now = self.clock()
        self._seen = {n: self._seen.get(n, now) for n in running}
        if running:
            parts.append("running " + ", ".join(f"{n} ({p.proposer}, {now - self._seen[n]:.0f}s)"
                                                for n, p in sorted(running.items())))  # fmt: skip
        if self.doing:
            parts.append(f"{self.doing}…")
        return " · ".join(parts)

    def __rich__(self) -> Text:
        return Text(self.text())
