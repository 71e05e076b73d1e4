"""What studies found: one study's summary and convergence figure, and `python -m jaxhpo.report PATH`, which compares
every study under PATH (a study folder or a multirun folder) in report.md, report.csv, convergence.png,
failures.png and ranks.png. The statistics (confidence intervals, paired tests, anytime ranks, hyperparameter
importance) are computed in jaxhpo.stats; this module gathers their inputs from the studies and renders them."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import yaml

from jaxhpo import attribution, stats
from jaxhpo.journal import JOURNAL_FILE, STATUSES, Journal, JournalError, TrialRecord
from jaxhpo.protocol import NOT_RUN_PREFIX, charged_seconds
from jaxhpo.space import box_id


def summarize(
    trials: Sequence[TrialRecord], *, method: str, space_id: str, seed: int, budget_s: float | None,
    llm_turns: Sequence[dict] = (), llm_startup_s: float = 0.0, budget_charge: str = "wall", metric: str = "val_bpb",
    direction: str = "minimize",
) -> dict:
    """summary.json: the best configuration, outcome counts, failure share, trials per proposer, budget used (as
    protocol.budget_charge counts it), and LLM turns, fallbacks and time (not charged to the budget). Trials lost
    to their LLM call (protocol=paper) never ran: counted as `lost_to_llm`, left out of the failure shares, as the
    study's records left them out."""
    lost = sum(1 for t in trials if (t.error or "").startswith(NOT_RUN_PREFIX))
    ok = [t for t in trials if not t.failed]
    best = (max if direction == "maximize" else min)(ok, key=lambda t: t.val_bpb) if ok else None
    statuses = Counter(t.status for t in trials)
    n = len(trials) - lost
    statuses["crashed"] -= lost
    return {
        "method": method,
        "space_id": space_id,
        "seed": seed,
        "trials": len(trials),
        "metric": metric,
        "direction": direction,
        "best_val_bpb": best.val_bpb if best else None,  # the best value of `metric` (val_bpb by default)
        "best_trial": best.number if best else None,
        "best_params": best.params if best else None,
        "status_counts": {s: statuses.get(s, 0) for s in STATUSES},
        "failed_percent": round(100 * (n - len(ok)) / n, 1) if n else 0.0,
        "oom_percent": round(100 * statuses.get("oom", 0) / n, 1) if n else 0.0,
        "oom_predicted_percent": round(100 * sum(map(predicted_oom, trials)) / n, 1) if n else 0.0,
        "proposer_counts": dict(Counter(t.proposer for t in trials)),
        "trial_seconds": round(sum(t.wall_seconds for t in trials), 1),
        "charged_seconds": round(sum(charged_seconds(t, budget_charge) for t in trials), 1),
        "budget_charge": budget_charge,
        "budget_s": budget_s,
        "lost_to_llm": lost,
        **{k: v for k, v in llm_figures([llm_turns]).items() if k != "llm_fallback_pct"},
        "llm_seconds": round(llm_startup_s + sum(t["latency_s"] or 0.0 for t in llm_turns), 1),
    }


def llm_figures(studies: Sequence[Sequence[dict]]) -> dict:
    """LLM use from each study's llm_turns rows (one per call): turns (trials an LLM was asked for), calls,
    calls that failed or gave nothing usable (fallbacks) and their share, seconds of calls per turn."""
    turns = sum(len({c["trial_number"] for c in calls}) for calls in studies)
    calls = [c for study in studies for c in study]
    seconds = sum(c["latency_s"] or 0.0 for c in calls)
    fallbacks = sum(bool(c["fallback"]) for c in calls)
    return {"llm_turns": turns, "llm_calls": len(calls), "llm_fallbacks": fallbacks,
            "llm_fallback_pct": _pct(fallbacks, len(calls)),
            "llm_seconds_per_turn": round(seconds / turns, 1) if turns else None}  # fmt: skip


def predicted_oom(trial: TrialRecord) -> bool:
    """An OOM the memory pre-flight predicted (the trial compiled and stopped), not a real allocation failure."""
    return trial.status == "oom" and bool(trial.result.get("predicted"))


def best_so_far(trials: Sequence[TrialRecord], budget_charge: str = "wall") -> tuple[np.ndarray, np.ndarray]:
    """(cumulative budget charged at each trial's end, best val_bpb so far; NaN before the first success); the
    budget as protocol.budget_charge counts it, trial wall time by default."""
    elapsed = np.cumsum([charged_seconds(t, budget_charge) for t in trials])
    values = np.array([np.inf if t.failed else t.val_bpb for t in trials])
    best = np.minimum.accumulate(values) if len(values) else values
    return elapsed, np.where(np.isinf(best), np.nan, best)


def plot_convergence(studies: Mapping[str, Sequence[Sequence[TrialRecord]]], path: str | Path, sign: float = 1.0,
                     metric: str = "val_bpb") -> None:  # fmt: skip
    """Best-so-far val_bpb (or `metric`) against cumulative trial time; one curve per method (mean ± sample std over
    its studies), each trial marked for single-study methods: dots for successes, stars for LLM-proposed successes,
    red crosses for failures. The trials' values are minimized; `sign` -1 draws a maximized metric's own values."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for method, runs in studies.items():
        curves = [best_so_far(r) for r in runs if r]
        if not curves:
            continue
        horizon = max(c[0][-1] for c in curves)
        grid = np.linspace(0, horizon, 200)
        # Best-so-far is a step function of time: hold each value until the next trial ends.
        ys = np.array([stats.step_values(grid, x, y) for x, y in curves])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no success yet at that time
            mean, std = np.nanmean(ys, axis=0), np.nanstd(ys, axis=0, ddof=1)  # the report's table uses ddof 1
        mean = sign * mean
        (line,) = ax.plot(grid, mean, drawstyle="steps-post", label=f"{method} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(grid, mean - std, mean + std, step="post", alpha=0.2, color=line.get_color())
        else:
            trials = runs[0]
            x, _ = curves[0]
            ok = np.array([not t.failed for t in trials])
            vals = np.array([sign * t.val_bpb if not t.failed else np.nan for t in trials])
            llm = np.array([t.proposer == "llm" for t in trials])
            ax.scatter(x[ok & ~llm], vals[ok & ~llm], s=12, color=line.get_color(), alpha=0.6)
            if (ok & llm).any():
                ax.scatter(x[ok & llm], vals[ok & llm], s=60, marker="*", color="black", label="LLM-proposed")
            if (~ok).any():
                top = (np.nanmax if sign > 0 else np.nanmin)(vals) if ok.any() else 1.0  # at the worst end
                ax.scatter(x[~ok], np.full((~ok).sum(), top), marker="x", color="red", label="failed trial")
    ax.set_xlabel("cumulative trial time (s)")
    ax.set_ylabel(f"best {metric} so far")
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


# ---- Comparing studies: `python -m jaxhpo.report PATH` ----

DASH = "–"
CSV_COLUMNS = (
    "method", "space_name", "space_id", "studies", "studies_with_success", "best_val_bpb_mean", "best_val_bpb_std",
    "best_val_bpb_min", "failed_pct", "oom_pct", "oom_predicted_pct", "trials", "llm_turns", "llm_calls", "llm_fallback_pct",
    "llm_seconds_per_turn", "trial_seconds_mean", "budget_s", "budget_used_pct", "best_val_bpb_ci_low", "best_val_bpb_ci_high",
)  # fmt: skip
RANK_POINTS = 201  # budget points of the anytime ranks: 0 %, 0.5 %, ..., 100 % of the common budget
RANK_TABLE_AT = (0.25, 0.5, 1.0)  # shares of the common budget the rank table shows
IMPORTANCE_TOP = 10  # hyperparameters shown per space


class ReportError(ValueError):
    """Nothing to report on; the message is one line that says how to fix it."""


@dataclass(frozen=True)
class StudyRun:
    """One study as read from its journal."""

    path: Path  # the study folder
    method: str
    space_id: str
    space_name: str
    seed: int | None
    budget_s: float | None  # None: no budget, or not recorded
    trials: list[TrialRecord]
    llm_turns: list[dict]
    unfinished: int  # trials started and not finished: running now, or cut off by a crash
    budget_charge: str = "wall"  # protocol.budget_charge: what the budget charged each trial
    space: dict = field(default_factory=dict)  # the space definition (name -> spec), {} where not recorded
    protocol: str = "jaxhpo"  # protocol.name the study ran by
    warmstart: int = 0  # method.options.warmstart: configurations from one LLM call run first
    metric: str = "val_bpb"  # study.metric: what each trial's val_bpb field holds
    direction: str = "minimize"  # study.direction; a maximized metric's trials are read negated (lower is better)

    @property
    def label(self) -> str:
        """What the report calls the study's method: its name, with its protocol where that is not jaxhpo's and its
        warm start where it had one, so that `protocol=paper` or warm-started studies are rows of their own."""
        parts = ([self.protocol] if self.protocol != "jaxhpo" else []) + (
            [f"warmstart={self.warmstart}"] if self.warmstart else [])  # fmt: skip
        return f"{self.method} ({', '.join(parts)})" if parts else self.method

    @property
    def best(self) -> TrialRecord | None:
        """The best successful trial (the first of equals, as in summary.json), None without a success."""
        ok = [t for t in self.trials if not t.failed]
        return min(ok, key=lambda t: t.val_bpb) if ok else None

    @property
    def trial_seconds(self) -> float:
        """Summed trial wall time: what the study's budget is charged."""
        return sum(t.wall_seconds for t in self.trials)


def _hydra_budget(folder: Path) -> float | None:
    # Journals written before study info held budget_s: Hydra's saved config of the run still knows it.
    try:
        budget = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["study"]["budget_s"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return float(budget) if isinstance(budget, (int, float)) and not isinstance(budget, bool) else None


def load_study(journal_path: Path) -> StudyRun:
    """Read one study from its journal (read-only: a running study keeps writing); raises JournalError."""
    with Journal(journal_path, readonly=True) as journal:
        info, trials, turns = journal.study_info(), journal.trials(), journal.llm_turns()
        unfinished = len(journal.pending())
    first = trials[0] if trials else None
    folder = journal_path.parent
    # A method that searched more than its space file (hybrid: the model's structure too) is compared on that file's.
    space = info.get("base_space") or info.get("space") or {}
    direction = info.get("direction", "minimize")
    if direction == "maximize":  # everything below ranks by "lower is better"
        trials = [t if t.val_bpb is None else dataclasses.replace(t, val_bpb=-t.val_bpb) for t in trials]
    return StudyRun(
        path=folder,
        method=info.get("method") or (first.method if first else "unknown"),
        # Compared as the box they search: a protocol's prior over powers of two is the protocol's, not the space's.
        space_id=box_id(space) if space else info.get("space_id") or (first.space_id if first else "unknown"),
        space_name=info.get("space_name") or "",
        seed=info.get("seed"),
        # A recorded null means "no budget"; only a missing key sends us to the Hydra config.
        budget_s=info["budget_s"] if "budget_s" in info else _hydra_budget(folder),
        trials=trials,
        llm_turns=turns,
        unfinished=unfinished,
        # A journal written before protocols existed ran jaxhpo's, which charges wall time.
        budget_charge=(info.get("protocol") or {}).get("budget_charge", "wall"),
        space=space,
        protocol=(info.get("protocol") or {}).get("name", "jaxhpo"),
        warmstart=int((info.get("method_options") or {}).get("warmstart") or 0),
        metric=info.get("metric", "val_bpb"),
        direction=direction,
    )


def load_studies(root: Path) -> tuple[list[StudyRun], list[str]]:
    """Every study under `root` (found by their journal files, at any depth), and one line per journal skipped
    because it cannot be read; raises ReportError when there is nothing to report."""
    if not root.exists():
        raise ReportError(
            f"{root} does not exist; give a study folder (one holding {JOURNAL_FILE}) or a folder of studies, "
            "e.g. multirun/<date>"
        )
    paths = sorted(root.rglob(JOURNAL_FILE))
    if not paths:
        raise ReportError(
            f"no {JOURNAL_FILE} under {root}; give a study's run folder (e.g. outputs/<method>/<date>) or a "
            "multirun folder holding studies"
        )
    studies, skipped = [], []
    for path in paths:
        try:
            studies.append(load_study(path))
        except (JournalError, json.JSONDecodeError) as e:  # JSONDecodeError: a damaged JSON column
            skipped.append(f"skipped {path}: {e}")
    if not studies:
        raise ReportError(f"none of the {len(paths)} journals under {root} can be read: {skipped[0]}")
    return studies, skipped


def group_studies(studies: Sequence[StudyRun]) -> dict[tuple[str, str], list[StudyRun]]:
    """Studies by (method label, space_id): seeds of the same method and protocol on the same space are compared as
    one row."""
    groups: dict[tuple[str, str], list[StudyRun]] = {}
    for study in studies:
        groups.setdefault((study.label, study.space_id), []).append(study)
    return groups


def _pct(part: int, whole: int) -> float | None:
    return 100 * part / whole if whole else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _improvers(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Trials that improved their study's best-so-far val_bpb (the first success included)."""
    best, out = np.inf, []
    for t in trials:
        if not t.failed and t.val_bpb < best:
            best = t.val_bpb
            out.append(t)
    return out


def method_rows(studies: Sequence[StudyRun]) -> list[dict]:
    """One row per method (and space), plain numbers (None where undefined), best mean first (within each space:
    bests on different spaces do not compare)."""
    spaces = list(dict.fromkeys(s.space_id for s in studies))
    rows = []
    for (method, space_id), runs in group_studies(studies).items():
        trials = [t for r in runs for t in r.trials]
        bests = [r.best.val_bpb for r in runs if r.best]
        ci = stats.bootstrap_ci(bests) if len(bests) > 1 else None
        budgeted = [r for r in runs if r.budget_s]
        rows.append({
            "method": method,
            "space_name": runs[0].space_name,
            "space_id": space_id,
            "studies": len(runs),
            "studies_with_success": len(bests),
            "best_val_bpb_mean": _mean(bests),
            "best_val_bpb_std": float(np.std(bests, ddof=1)) if len(bests) > 1 else None,
            "best_val_bpb_min": min(bests, default=None),
            "failed_pct": _pct(sum(t.failed for t in trials), len(trials)),
            "oom_pct": _pct(sum(t.status == "oom" for t in trials), len(trials)),
            "oom_predicted_pct": _pct(sum(map(predicted_oom, trials)), len(trials)),
            "trials": len(trials),
            **{k: v for k, v in llm_figures([r.llm_turns for r in runs]).items() if k != "llm_fallbacks"},
            "trial_seconds_mean": _mean([r.trial_seconds for r in runs]),
            "budget_s": _mean([r.budget_s for r in budgeted]),
            "budget_used_pct": _mean([100 * r.trial_seconds / r.budget_s for r in budgeted]),
            "best_val_bpb_ci_low": ci[0] if ci else None,
            "best_val_bpb_ci_high": ci[1] if ci else None,
        })  # fmt: skip
    best = "best_val_bpb_mean"
    return sorted(rows, key=lambda r: (spaces.index(r["space_id"]), r[best] is None, r[best] or 0.0, r["method"]))


def proposer_rows(studies: Sequence[StudyRun]) -> list[dict]:
    """Per method (in method_rows order), one row per proposer, in order of first use: what each proposed, how it
    fared, how often it improved its study's best-so-far and in how many studies it proposed the best trial."""
    groups = group_studies(studies)
    rows = []
    for m in method_rows(studies):
        runs = groups[(m["method"], m["space_id"])]
        improved = Counter(t.proposer for r in runs for t in _improvers(r.trials))
        won = Counter(r.best.proposer for r in runs if r.best)
        by_proposer: dict[str, list[TrialRecord]] = {}
        for t in (t for r in runs for t in r.trials):
            by_proposer.setdefault(t.proposer, []).append(t)
        for proposer, trials in by_proposer.items():
            ok = [t.val_bpb for t in trials if not t.failed]
            rows.append({
                "method": m["method"], "space_name": m["space_name"], "space_id": m["space_id"], "proposer": proposer,
                "trials": len(trials), "ok": len(ok),
                "failed_pct": _pct(len(trials) - len(ok), len(trials)),
                "oom_pct": _pct(sum(t.status == "oom" for t in trials), len(trials)),
                "best_val_bpb": min(ok, default=None), "improvements": improved[proposer],
                "studies_won": won[proposer], "studies": len(runs),
            })  # fmt: skip
    return rows


def space_rows(studies: Sequence[StudyRun]) -> list[dict]:
    """One row per search space: its studies, methods, trials and the best trial found on it."""
    spaces: dict[str, list[StudyRun]] = {}
    for study in studies:
        spaces.setdefault(study.space_id, []).append(study)
    rows = []
    for space_id, runs in spaces.items():
        winner = min((r for r in runs if r.best), key=lambda r: r.best.val_bpb, default=None)
        rows.append({
            "space_name": runs[0].space_name, "space_id": space_id, "studies": len(runs),
            "methods": sorted({r.label for r in runs}), "trials": sum(len(r.trials) for r in runs),
            "best_val_bpb": winner.best.val_bpb if winner else None,
            "best_method": winner.label if winner else None, "best_seed": winner.seed if winner else None,
        })  # fmt: skip
    return rows


def seed_bests(runs: Sequence[StudyRun]) -> dict[int, float]:
    """Each seed's best val_bpb, over the seeds whose study found a success (a seed studied twice: its first
    study; studies without a recorded seed cannot be paired and are left out)."""
    first: dict[int, StudyRun] = {}
    for run in runs:
        if run.seed is not None:
            first.setdefault(run.seed, run)
    return {seed: run.best.val_bpb for seed, run in first.items() if run.best}


def paired_rows(studies: Sequence[StudyRun]) -> list[dict]:
    """One row per two methods on the same space (in method_rows order, the better mean as a): the Wilcoxon
    signed-rank test of their best val_bpb paired by seed, how many seeds each won, and the mean difference."""
    groups = group_studies(studies)
    methods = method_rows(studies)
    rows = []
    for i, a in enumerate(methods):
        for b in (b for b in methods[i + 1:] if b["space_id"] == a["space_id"]):
            best_a = seed_bests(groups[(a["method"], a["space_id"])])
            best_b = seed_bests(groups[(b["method"], b["space_id"])])
            test = stats.paired_wilcoxon(best_a, best_b)
            seeds = sorted(set(best_a) & set(best_b))
            a_better = sum(best_a[s] < best_b[s] for s in seeds)
            b_better = sum(best_a[s] > best_b[s] for s in seeds)
            rows.append({
                "method_a": a["method"], "method_b": b["method"], "space_name": a["space_name"],
                "space_id": a["space_id"], "pairs": test.n_pairs, "a_better": a_better, "b_better": b_better,
                "mean_difference": _mean([best_a[s] - best_b[s] for s in seeds]), "p_value": test.p_value,
                "smallest_p": stats.smallest_wilcoxon_p(a_better + b_better) if test.p_value is not None else None,
            })  # fmt: skip
    return rows


@dataclass(frozen=True)
class RankCurves:
    """The anytime ranks of the methods on one space."""

    space_id: str
    space_name: str
    grid: np.ndarray  # budget charged, 0 to the smallest total any compared study spent
    ranks: dict[str, np.ndarray]  # method -> its average rank at each grid point, in method_rows order
    seeds: list[int]  # the seeds every method ran, over which the ranks are averaged
    budget_charges: list[str]  # the compared studies' protocol.budget_charge values


def rank_curves(studies: Sequence[StudyRun]) -> list[RankCurves]:
    """Per space with two or more methods that share a seed: each method's average rank over the shared seeds at
    each point of budget spent (stats.anytime_ranks). Studies with no finished trial, or no recorded seed, take
    no part; the grid ends at the smallest budget any compared study spent, so that every study is still
    running (or just finished) at each point."""
    order = {(r["method"], r["space_id"]): i for i, r in enumerate(method_rows(studies))}
    by_space: dict[str, dict[str, dict[int, StudyRun]]] = {}
    for (method, space_id), runs in sorted(group_studies(studies).items(), key=lambda item: order[item[0]]):
        seeded: dict[int, StudyRun] = {}
        for run in runs:
            if run.seed is not None and run.trials:
                seeded.setdefault(run.seed, run)
        if seeded:
            by_space.setdefault(space_id, {})[method] = seeded
    out = []
    for space_id, methods in by_space.items():
        seeds = stats.shared_seeds(methods)
        if len(methods) < 2 or not seeds:
            continue
        compared = [runs[s] for runs in methods.values() for s in seeds]
        curves = {
            m: {s: best_so_far(runs[s].trials, runs[s].budget_charge) for s in seeds} for m, runs in methods.items()
        }
        grid = np.linspace(0.0, min(float(x[-1]) for by_seed in curves.values() for x, _ in by_seed.values()),
                           RANK_POINTS)  # fmt: skip
        out.append(RankCurves(
            space_id=space_id, space_name=compared[0].space_name, grid=grid, ranks=stats.anytime_ranks(curves, grid),
            seeds=seeds, budget_charges=sorted({r.budget_charge for r in compared}),
        ))  # fmt: skip
    return out


def importance_rows(studies: Sequence[StudyRun]) -> list[dict]:
    """Per space: the hyperparameters' permutation importance for val_bpb (stats.importance) from the successful
    trials of every study on it, pooled over methods and seeds; `importance` is [] with too few trials."""
    spaces: dict[str, list[StudyRun]] = {}
    for study in studies:
        spaces.setdefault(study.space_id, []).append(study)
    rows = []
    for space_id, runs in spaces.items():
        ok = [t for r in runs for t in r.trials if not t.failed]
        # The recorded definition gives types and log scales; journals without one: the names the trials used.
        definition = next((r.space for r in runs if r.space), None)
        names = definition or list(dict.fromkeys(name for t in ok for name in t.params))
        rows.append({
            "space_name": runs[0].space_name, "space_id": space_id, "trials": len(ok),
            "importance": stats.importance([t.params for t in ok], [t.val_bpb for t in ok], names),
        })  # fmt: skip
    return rows


def _num(value: float | None, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table padded to aligned columns, so it also reads well on a terminal."""
    widths = [max(len(c) for c in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _label(method: str, row: dict, many_spaces: bool) -> str:
    return f"{method} [{row['space_name'] or row['space_id']}]" if many_spaces else method


def _labels(rows: Sequence[dict], many_spaces: bool) -> list[str]:
    return [_label(r["method"], r, many_spaces) for r in rows]


def method_markdown(rows: Sequence[dict], many_spaces: bool) -> str:
    """The method table as Markdown; counts and percentages are over all of a method's trials."""
    header = ["method", "studies", "best val_bpb (mean ± std)", "ci95", "failed %", "OOM %", "trials (total)",
              "LLM turns (total)", "LLM calls: failed %", "LLM s / turn", "budget used / study (mean)"]  # fmt: skip
    body = []
    for label, r in zip(_labels(rows, many_spaces), rows):
        without = r["studies"] - r["studies_with_success"]
        used = _duration(r["trial_seconds_mean"])
        if r["budget_used_pct"] is not None:
            used += f" ({r['budget_used_pct']:.0f} % of {_duration(r['budget_s'])})"
        oom = _num(r["oom_pct"], ".1f")
        if r["oom_predicted_pct"]:
            oom += f" ({r['oom_predicted_pct']:.1f} predicted)"
        body.append([
            label,
            f"{r['studies']}" + (f" ({without} without a success)" if without else ""),
            f"{_num(r['best_val_bpb_mean'], '.4f')} ± {_num(r['best_val_bpb_std'], '.4f')}"
            if r["best_val_bpb_mean"] is not None else DASH,
            f"[{r['best_val_bpb_ci_low']:.4f}, {r['best_val_bpb_ci_high']:.4f}]"
            if r["best_val_bpb_ci_low"] is not None else DASH,
            _num(r["failed_pct"], ".1f"), oom, str(r["trials"]),
            str(r["llm_turns"]) if r["llm_turns"] else DASH, _num(r["llm_fallback_pct"], ".1f"),
            _num(r["llm_seconds_per_turn"], ".1f"), used,
        ])  # fmt: skip
    return markdown_table(header, body)


def proposer_markdown(rows: Sequence[dict], many_spaces: bool) -> str:
    """The proposer table as Markdown."""
    header = ["method", "proposer", "trials", "ok", "failed %", "OOM %", "best val_bpb", "improvements",
              "studies where it proposed the best"]  # fmt: skip
    body = [
        [label, r["proposer"], str(r["trials"]), str(r["ok"]), _num(r["failed_pct"], ".1f"), _num(r["oom_pct"], ".1f"),
         _num(r["best_val_bpb"], ".4f"), str(r["improvements"]), f"{r['studies_won']}/{r['studies']}"]
        for label, r in zip(_labels(rows, many_spaces), rows)
    ]  # fmt: skip
    return markdown_table(header, body)


def paired_markdown(rows: Sequence[dict], many_spaces: bool) -> str:
    """The paired-test table as Markdown, or a line saying there is no pair to test."""
    if not rows:
        return "No two methods ran on the same space: nothing to pair."
    header = ["method A", "method B", "seeds paired", "A better / B better", "mean best A − B", "p (Wilcoxon)",
              "lowest p possible"]  # fmt: skip
    body = [
        [_label(r["method_a"], r, many_spaces), _label(r["method_b"], r, many_spaces), str(r["pairs"]),
         f"{r['a_better']} / {r['b_better']}", _num(r["mean_difference"], "+.4f"), _num(r["p_value"], ".3g"),
         _num(r["smallest_p"], ".3g")]
        for r in rows
    ]  # fmt: skip
    return markdown_table(header, body)


def _budget_label(curves: RankCurves) -> str:
    return f"{_duration(float(curves.grid[-1]))} ({'/'.join(curves.budget_charges)})"


def rank_markdown(results: Sequence[RankCurves], many_spaces: bool) -> str:
    """The average anytime rank of each method at a few shares of the common budget, or a line saying why there
    is none."""
    if not results:
        return "No two methods on the same space share a seed with a finished trial: no ranks."
    header = ["method", "seeds", "common budget", *(f"rank at {100 * f:.0f} %" for f in RANK_TABLE_AT)]
    body = []
    for res in results:
        row = {"space_name": res.space_name, "space_id": res.space_id}
        at = [round(f * (len(res.grid) - 1)) for f in RANK_TABLE_AT]
        for method, ranks in res.ranks.items():
            body.append([_label(method, row, many_spaces), str(len(res.seeds)), _budget_label(res),
                         *(f"{ranks[i]:.2f}" for i in at)])  # fmt: skip
    return markdown_table(header, body)


def importance_markdown(rows: Sequence[dict], many_spaces: bool) -> str:
    """The top hyperparameters by importance, per space, as Markdown (a line for a space with too few trials)."""
    header = (["space"] if many_spaces else []) + ["hyperparameter", "importance (mean ± std)", "ok trials"]
    body, short = [], []
    for r in rows:
        space = r["space_name"] or r["space_id"]
        if not r["importance"]:
            short.append(f"{space}: {_plural(r['trials'], 'successful trial')}, importance needs at least "
                         f"{stats.IMPORTANCE_MIN_TRIALS} (with varying val_bpb).")  # fmt: skip
        for name, mean, std in r["importance"][:IMPORTANCE_TOP]:
            body.append(([space] if many_spaces else []) + [name, f"{mean:.3f} ± {std:.3f}", str(r["trials"])])
    return "\n\n".join(([markdown_table(header, body)] if body else []) + short)


def space_markdown(rows: Sequence[dict]) -> str:
    """The search-space table as Markdown."""
    header = ["space", "space_id", "studies", "methods", "trials", "best val_bpb", "best by"]
    body = [
        [r["space_name"] or DASH, r["space_id"], str(r["studies"]), ", ".join(r["methods"]), str(r["trials"]),
         _num(r["best_val_bpb"], ".4f"), f"{r['best_method']}, seed {r['best_seed']}" if r["best_method"] else DASH]
        for r in rows
    ]  # fmt: skip
    return markdown_table(header, body)


def structures_markdown(studies: Sequence[StudyRun], root: Path, sign: float = 1.0) -> list[str]:
    """For studies whose trials carry structures (method=hybrid): each one's structure tree and where its
    improvement came from (jaxhpo.attribution); nothing otherwise."""
    hybrid = [s for s in studies if attribution.has_structures(s.trials)]
    if not hybrid:
        return []
    return ["## Structures", attribution.NOTES,
            *(attribution.study_markdown(f"{s.label}, seed {s.seed} (`{s.path.relative_to(root)}`)", s.trials, sign)
              for s in hybrid)]  # fmt: skip


def studies_markdown(studies: Sequence[StudyRun], root: Path, sign: float = 1.0) -> str:
    """Every study found, one row each, including those with no finished trial yet; trials started and not
    finished are counted apart (a running study, or one stopped mid-trial). `sign` -1: a maximized metric."""
    header = ["study", "method", "seed", "trials", "ok", "best val_bpb", "best trial (proposer)", "trial time"]
    body = []
    for s in studies:
        best = s.best
        body.append([
            str(s.path.relative_to(root)), s.label, DASH if s.seed is None else str(s.seed),
            f"{len(s.trials)}" + (f" (+{s.unfinished} unfinished)" if s.unfinished else ""),
            str(sum(not t.failed for t in s.trials)), _num(sign * best.val_bpb if best else None, ".4f"),
            f"{best.number} ({best.proposer})" if best else DASH, _duration(s.trial_seconds),
        ])  # fmt: skip
    return markdown_table(header, body)


def plot_failures(studies: Mapping[str, Sequence[Sequence[TrialRecord]]], path: str | Path) -> None:
    """Per method: the share of its trials that failed, stacked as real OOMs, OOMs the memory pre-flight predicted
    (hatched) and other failures (diverged, timeout, crashed); each study's own failed % (dot) and OOM % (cross)
    show the spread over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(studies) + 2), 4.2), dpi=120)
    for i, runs in enumerate(studies.values()):
        trials = [t for r in runs for t in r]
        oom = _pct(sum(t.status == "oom" for t in trials), len(trials)) or 0.0
        failed = _pct(sum(t.failed for t in trials), len(trials)) or 0.0
        predicted = _pct(sum(map(predicted_oom, trials)), len(trials)) or 0.0
        first = i == 0  # label each artist kind once, so the legend has one entry per kind
        ax.bar(i, oom - predicted, color="tab:red", width=0.6, label="OOM, real" if first else None)
        ax.bar(i, predicted, bottom=oom - predicted, color="tab:red", alpha=0.5, hatch="//", edgecolor="white",
               width=0.6, label="OOM, predicted by the pre-flight" if first else None)  # fmt: skip
        ax.bar(i, failed - oom, bottom=oom, color="tab:orange", width=0.6,
               label="other failures" if first else None)  # fmt: skip
        seeds = [r for r in runs if r]
        xs = i + (np.linspace(-0.18, 0.18, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds)))
        ax.scatter(xs, [100 * sum(t.failed for t in r) / len(r) for r in seeds], s=16, color="black", zorder=3,
                   label="one study: failed %" if first else None)  # fmt: skip
        ax.scatter(xs, [100 * sum(t.status == "oom" for t in r) / len(r) for r in seeds], s=22, marker="x",
                   color="darkred", zorder=3, label="one study: OOM %" if first else None)  # fmt: skip
    ax.set_xticks(range(len(studies)), list(studies), rotation=20 if len(studies) > 4 else 0)
    ax.set_xlim(-0.8, len(studies) - 0.2)  # bars keep their width when there are only one or two methods
    ax.set_ylim(0, 100)
    ax.set_ylabel("failed trials (%)")
    ax.grid(axis="y", alpha=0.3)
    if studies:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_ranks(results: Sequence[RankCurves], path: str | Path, many_spaces: bool = False) -> None:
    """Average anytime rank (1 = best) against budget spent, one panel per space, one line per method."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(7, 3.6 * len(results)), dpi=120, squeeze=False)
    for ax, res in zip(axes[:, 0], results):
        for method, ranks in res.ranks.items():
            ax.plot(res.grid, ranks, drawstyle="steps-post", label=method)
        ax.set_ylim(0.8, len(res.ranks) + 0.2)
        ax.set_yticks(range(1, len(res.ranks) + 1))
        ax.set_xlabel(f"budget spent (s, charged as {'/'.join(res.budget_charges)})")
        ax.set_ylabel("average rank (lower is better)")
        title = f"{_plural(len(res.seeds), 'shared seed')}"
        ax.set_title(f"{res.space_name or res.space_id}: {title}" if many_spaces else title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """report.csv: the method rows, plain numbers (6 significant digits), empty cells where undefined."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(["" if r[c] is None else f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]
                             for c in CSV_COLUMNS])  # fmt: skip


NOTES = f"""\
failed % counts every trial that did not finish ok (oom, diverged, timeout, crashed; pruned, stopped early by
study.pruner), as the original study's table did; OOM % counts status oom alone, and in brackets the share the
memory pre-flight refused after compiling (predicted) rather than trials that really ran out of memory. Percentages and totals pool all trials of a method's
studies; best val_bpb is the mean ± sample std (ddof 1) of each study's best, over the studies with a success
({DASH}: fewer than two). LLM calls: failed %: the share of LLM calls that failed or whose reply was not used. LLM s / turn: the seconds of LLM calls per trial an LLM was asked for (never charged to the budget). Budget used: summed trial
wall time per study (what the budget is charged; LLM time is not), and its share of study.budget_s where recorded.
ci95 is a percentile-bootstrap 95 % confidence interval of that mean (10 000 resamples of the studies' bests); it
never reaches beyond the lowest and highest best, so with few seeds it is too narrow ({DASH}: fewer than two)."""

PAIRED_NOTES = f"""\
Each row tests two methods on the same space with a two-sided Wilcoxon signed-rank test of their best val_bpb,
paired by seed over the seeds where both found a success: p is the chance of pairs at least this one-sided if
neither method were better, and with n seeds of unequal bests it cannot fall below 2/2^n (lowest p possible: 5
seeds never give less than 0.0625; {DASH}: fewer than two pairs, or all equal); the p-values are not corrected for
the number of pairs tested."""

RANK_NOTES = """\
Each method's rank among the methods on its space (1 = the best best-so-far val_bpb, ties share the average
rank, no success yet ranks last) at each point of budget spent as the study charged it (protocol.budget_charge;
budget rather than trial number, because it is what the studies were given and trials differ in length), averaged
over the seeds every method ran, from 0 to the smallest budget any compared study spent; ranks.png draws it at
every point."""

IMPORTANCE_NOTES = """\
Importance is how much a random forest fitted to the space's successful trials (all methods and seeds pooled;
log-scaled ranges as logarithms, categoricals by their index) worsens on held-out trials when that
hyperparameter's values are shuffled: the rise in held-out mean squared error in units of val_bpb's variance
(mean ± std over 5 cross-validation folds × 5 shuffles; about 0 or below: not used, near or above 1: it drives the
prediction); it describes where the methods searched, not the whole space, and says nothing about failures."""

PROPOSER_NOTES = """\
improvements: trials that improved their study's best-so-far val_bpb (a study's first success included)."""


def write_report(studies: Sequence[StudyRun], root: Path, out: Path, skipped: Sequence[str] = ()) -> str:
    """Write report.md, report.csv, convergence.png, failures.png and ranks.png into `out`; returns the
    Markdown."""
    scored = sorted({(s.metric, s.direction) for s in studies})
    if len(scored) > 1:
        what = ", ".join(f"{m} ({d})" for m, d in scored)
        raise ReportError(f"the studies under {root} score different things ({what}); report each apart")
    out.mkdir(parents=True, exist_ok=True)
    # The rows rank what was minimized (a maximized metric negated); they show and store the metric's own values.
    sign = -1.0 if scored and scored[0][1] == "maximize" else 1.0
    rows = _own_values(method_rows(studies), sign)
    many_spaces = len({s.space_id for s in studies}) > 1
    write_csv(rows, out / "report.csv")
    groups = group_studies(studies)
    trials_by_label = {
        label: [s.trials for s in groups[(r["method"], r["space_id"])]]
        for label, r in zip(_labels(rows, many_spaces), rows)
    }
    n_trials = sum(len(s.trials) for s in studies)
    ranks = rank_curves(studies)
    parts = [
        "# Study comparison",
        f"{_plural(len(studies), 'study', 'studies')} under `{root}`, {_plural(n_trials, 'finished trial')}.",
        *([_scored_note(*scored[0])] if scored and scored[0] != ("val_bpb", "minimize") else []),
        *(f"- {line}" for line in skipped),
        "## Methods",
        method_markdown(rows, many_spaces),
        NOTES,
        "## Paired tests",
        paired_markdown(_own_values(paired_rows(studies), sign), many_spaces),
        PAIRED_NOTES,
        "## Anytime ranks",
        rank_markdown(ranks, many_spaces),
        RANK_NOTES,
        "## Hyperparameter importance",
        importance_markdown(importance_rows(studies), many_spaces),
        IMPORTANCE_NOTES,
        "## Proposers",
        proposer_markdown(_own_values(proposer_rows(studies), sign), many_spaces),
        PROPOSER_NOTES,
        "## Search spaces",
        space_markdown(_own_values(space_rows(studies), sign)),
        *structures_markdown(studies, root, sign),
        "## Studies",
        studies_markdown(studies, root, sign),
    ]
    # Plots need a finished trial: an all-empty report gets no figures rather than empty axes.
    if n_trials:
        plot_convergence(trials_by_label, out / "convergence.png", sign, scored[0][0])
        plot_failures(trials_by_label, out / "failures.png")
        parts += ["## Figures", "![best val_bpb so far against trial time](convergence.png)",
                  "![failed trials per method](failures.png)"]  # fmt: skip
    if ranks:
        plot_ranks(ranks, out / "ranks.png", many_spaces)
        parts.append("![average rank of each method against budget spent](ranks.png)")
    markdown = "\n\n".join(parts) + "\n"
    if scored and scored[0][0] != "val_bpb":  # headers, notes and captions name the metric the studies scored
        markdown = re.sub(r"\bval_bpb\b", scored[0][0], markdown)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    return markdown


# The fields of the report's rows that hold a value of the metric (or a difference of two): negated for a maximized
# one, whose confidence interval's ends swap.
_VALUE_FIELDS = ("best_val_bpb_mean", "best_val_bpb_min", "best_val_bpb", "mean_difference")


def _own_values(rows: list[dict], sign: float) -> list[dict]:
    """Rows computed on minimized values, with a maximized metric's own values (sign -1) put back."""
    if sign > 0:
        return rows
    out = []
    for r in rows:
        r = {k: (-v if k in _VALUE_FIELDS and v is not None else v) for k, v in r.items()}
        if r.get("best_val_bpb_ci_low") is not None:
            r["best_val_bpb_ci_low"], r["best_val_bpb_ci_high"] = -r["best_val_bpb_ci_high"], -r["best_val_bpb_ci_low"]
        out.append(r)
    return out


def _scored_note(metric: str, direction: str) -> str:
    better = "higher" if direction == "maximize" else "lower"
    return (f"**These studies score {metric} ({direction}d): {better} is better (ranks and wins count that way); "
            f"report.csv keeps its column names (best_val_bpb_mean, ...) for {metric}.**")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxhpo.report PATH [--out DIR]`: print the comparison and write its files; 2 on a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxhpo.report",
        description="Compare the studies under PATH: report.md (also printed), report.csv, convergence.png, "
        "failures.png and ranks.png.",
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="a study folder, or a folder of studies (multirun)")
    parser.add_argument("--out", type=Path, help="where to write the report files (default: PATH)")
    args = parser.parse_args(argv)
    try:
        studies, skipped = load_studies(args.path)
        for line in skipped:
            print(f"warning: {line}", file=sys.stderr)
        out = args.out or args.path
        markdown = write_report(studies, args.path, out, skipped)
    except (ReportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    print(f"wrote report.md, report.csv and figures to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
