"""What a study found: the summary numbers and the convergence figure."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from jaxhpo.journal import STATUSES, TrialRecord


def summarize(
    trials: Sequence[TrialRecord], *, method: str, space_id: str, seed: int, budget_s: float | None,
    llm_turns: Sequence[dict] = (), llm_startup_s: float = 0.0,
) -> dict:
    """summary.json: the best configuration, outcome counts, failure share, trials per proposer, budget used,
    and LLM turns, fallbacks and time (not charged to the budget)."""
    ok = [t for t in trials if not t.failed]
    best = min(ok, key=lambda t: t.val_bpb) if ok else None
    statuses = Counter(t.status for t in trials)
    n = len(trials)
    return {
        "method": method,
        "space_id": space_id,
        "seed": seed,
        "trials": n,
        "best_val_bpb": best.val_bpb if best else None,
        "best_trial": best.number if best else None,
        "best_params": best.params if best else None,
        "status_counts": {s: statuses.get(s, 0) for s in STATUSES},
        "failed_percent": round(100 * (n - len(ok)) / n, 1) if n else 0.0,
        "oom_percent": round(100 * statuses.get("oom", 0) / n, 1) if n else 0.0,
        "proposer_counts": dict(Counter(t.proposer for t in trials)),
        "trial_seconds": round(sum(t.wall_seconds for t in trials), 1),
        "budget_s": budget_s,
        "llm_turns": len(llm_turns),
        "llm_fallbacks": sum(1 for t in llm_turns if t["fallback"]),
        "llm_seconds": round(llm_startup_s + sum(t["latency_s"] or 0.0 for t in llm_turns), 1),
    }


def best_so_far(trials: Sequence[TrialRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative trial wall time at each trial's end, best val_bpb so far; NaN before the first success)."""
    elapsed = np.cumsum([t.wall_seconds for t in trials])
    values = np.array([np.inf if t.failed else t.val_bpb for t in trials])
    best = np.minimum.accumulate(values) if len(values) else values
    return elapsed, np.where(np.isinf(best), np.nan, best)


def plot_convergence(studies: Mapping[str, Sequence[Sequence[TrialRecord]]], path: str | Path) -> None:
    """Best-so-far val_bpb against cumulative trial time; one curve per method (mean ± sample std over its studies),
    each trial marked for single-study methods: dots for successes, stars for LLM-proposed successes, red
    crosses for failures."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for method, runs in studies.items():
        curves = [best_so_far(r) for r in runs if r]
        if not curves:
            continue
        horizon = max(c[0][-1] for c in curves)
        grid = np.linspace(0, horizon, 200)
        # Best-so-far is a step function of time: hold each value until the next trial ends.
        ys = np.array([_step_at(grid, x, y) for x, y in curves])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no success yet at that time
            mean, std = np.nanmean(ys, axis=0), np.nanstd(ys, axis=0, ddof=1)  # the report's table uses ddof 1
        (line,) = ax.plot(grid, mean, drawstyle="steps-post", label=f"{method} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(grid, mean - std, mean + std, step="post", alpha=0.2, color=line.get_color())
        else:
            trials = runs[0]
            x, _ = curves[0]
            ok = np.array([not t.failed for t in trials])
            vals = np.array([t.val_bpb if not t.failed else np.nan for t in trials])
            llm = np.array([t.proposer == "llm" for t in trials])
            ax.scatter(x[ok & ~llm], vals[ok & ~llm], s=12, color=line.get_color(), alpha=0.6)
            if (ok & llm).any():
                ax.scatter(x[ok & llm], vals[ok & llm], s=60, marker="*", color="black", label="LLM-proposed")
            if (~ok).any():
                top = np.nanmax(vals) if ok.any() else 1.0
                ax.scatter(x[~ok], np.full((~ok).sum(), top), marker="x", color="red", label="failed trial")
    ax.set_xlabel("cumulative trial time (s)")
    ax.set_ylabel("best val_bpb so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pyplot():
    import matplotlib  # imported late: a study that never plots should not pay for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _step_at(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(x, grid, side="right") - 1
    return np.where(idx >= 0, y[np.clip(idx, 0, len(y) - 1)], np.nan)
