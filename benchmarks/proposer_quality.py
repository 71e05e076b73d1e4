"""Proposer quality: how close each proposer gets to the optimum of cheap synthetic objectives in a short study,
compared pairwise over seeds, and what its asks and tells cost.

    python benchmarks/proposer_quality.py [--proposers random tpe cmaes optuna_tpe optuna_cmaes]
        [--objectives sphere ellipsoid rosenbrock rastrigin autoresearch] [--seeds 10] [--trials 60] [--json PATH]

A proposer may carry options, `method:key=value,key=value` (values in YAML: `tpe:split=linear,gamma=0.1`), to
measure a variant beside its default; a variant is paired with its method's default (`tpe:avoid_failures=false`
with `tpe`) when both run, and a tpe or cmaes variant with optuna_tpe or optuna_cmaes.

Objectives. Four BBOB-style functions over 10 floats x0..x9 in [-5, 5] (linear, default 0): sphere, ellipsoid
(condition 1e6), Rosenbrock and Rastrigin, each of z = x - x_opt with its own optimum x_opt drawn once from
[-4, 4]^10 (fixed seed: every run sees the same functions). No rotation or oscillation, unlike BBOB proper. Each is
written so that f(x_opt) = 0 exactly, so the value is f(x) - f(x_opt) and the regret is the best value found.
"autoresearch" is the 14-D space of hydra_configs/space/autoresearch.yaml with the synthetic val_bpb of
tests/test_proposers.py, altered slightly: a shifted quadratic in the unit encoding over the 13 ordered parameters
(DEPTH and ASPECT_RATIO weighted 3x), plus a per-WINDOW_PATTERN penalty (the categorical's place in the unit
cube means nothing, so it is not in the quadratic). It fails ("oom", val_bpb None) when DEPTH and ASPECT_RATIO are
both in their top third (next to the optimum's 0.5, 0.5) and when DEVICE_BATCH_SIZE is 256 with a model larger
than the optimum's (unit DEPTH + ASPECT_RATIO > 1). Its minimum is computed exactly: the objective is separable,
so the floor is the sum over parameters of each one's own minimum (0 for a float, the nearest level's slice
centre for an integer or power of two, the smallest penalty for the pattern); the configuration attaining it is
checked to succeed and to score that floor. Regret = best successful value - floor (clipped at 0: rounding).

Studies. Per objective x proposer x seed (0..seeds-1), one sequential study as `jaxhpo.study` runs it without the
trainer: trial 0 is the space default, told and not asked; then ask(history) / tell(record) to --trials trials,
failures told as status "oom". Each ask and tell is timed (time.perf_counter); building records and scoring are
not. Proposers take their default options and jaxhpo's protocol; JAX runs on the CPU, as in the study process.

Figures. (1) Per objective, the mean (± sample std over seeds) best-so-far regret after trials/3, 2*trials/3 and all
trials, and for autoresearch the failure rate (the failed share of all trials, the default's included), the
late failure rate (of the last half of the trials), both pooled over seeds, and the share of the budget spent on
failed trials: a success costs 1, a failure FAILED_COST, the mean wall seconds of the OOM trials of the real
surrogate table (benchmarks/data/surrogate_tiny.csv: model=tiny under the FLOP budget) over those of its ok trials
-- an OOM ends before or early in training, so it costs less than a trial that trains to its budget. (2) Paired by seed, at the end: the
geometric mean of regret_a / regret_b (< 1: a is better), a 95% bootstrap CI (10,000 resamples of the seeds), the
two-sided Wilcoxon signed-rank p-value of log(regret_a / regret_b), and the seeds where a is better. 1e-12 is
added to every regret before ratios and logs, so a regret of exactly 0 does not divide by zero. The noise floor
row, random vs random with seeds + 1000, shows what ratio chance alone gives. (3) Milliseconds per ask and per tell, median and mean over all calls of all objectives; CMA-ES's
one-off jit compiles (per dimension) land in its first calls, hence in the means, not the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import yaml
from scipy.stats import wilcoxon

from jaxhpo.journal import TrialRecord
from jaxhpo.proposers import make_proposer
from jaxhpo.space import Space

SPACE_YAML = Path(__file__).resolve().parents[1] / "hydra_configs" / "space" / "autoresearch.yaml"
EPS = 1e-12  # added to regrets before ratios and logs
NOISE = ("random", "random+1000")  # the noise floor pair: random search against itself with other seeds
PAIRED = ("tpe", "cmaes")  # each (and any variant of it) against Optuna's sampler of the same algorithm
DIM = 10
REAL_TRIALS = Path(__file__).resolve().parent / "data" / "surrogate_tiny.csv"


def failed_cost(path: Path = REAL_TRIALS) -> float:
    """Mean wall seconds of the real OOM trials over those of the ok ones (what a failure costs, relatively)."""
    walls: dict[str, list[float]] = {"ok": [], "oom": []}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["status"] in walls:
                walls[row["status"]].append(float(row["wall_seconds"]))
    return float(np.mean(walls["oom"]) / np.mean(walls["ok"]))


FAILED_COST = failed_cost()

# -- objectives: (space, params -> value or None for a failure, floor) ---------------------------------------------

BBOB_SPACE = Space("bbob10", {f"x{i}": {"type": "float", "key": f"bbob.x{i}", "low": -5.0, "high": 5.0,
                                        "default": 0.0} for i in range(DIM)})  # fmt: skip
COND = 10.0 ** (6 * np.arange(DIM) / (DIM - 1))  # ellipsoid axis weights, 1 to 1e6
BBOB = {
    "sphere": lambda z: np.sum(z**2),
    "ellipsoid": lambda z: np.sum(COND * z**2),
    "rosenbrock": lambda z: np.sum(100 * ((z[:-1] + 1) ** 2 - (z[1:] + 1)) ** 2 + z[:-1] ** 2),  # of z + 1
    "rastrigin": lambda z: 10 * DIM + np.sum(z**2 - 10 * np.cos(2 * np.pi * z)),
}


def bbob(name: str) -> Callable[[dict], float]:
    """The BBOB-style function `name` shifted to its fixed optimum; 0 there."""
    x_opt = np.random.default_rng([2026, list(BBOB).index(name)]).uniform(-4, 4, DIM)
    return lambda params: float(BBOB[name](np.array([params[n] for n in BBOB_SPACE.names]) - x_opt))


AR_SPACE = Space.from_file(SPACE_YAML)
I_DEPTH, I_ASPECT = AR_SPACE.names.index("DEPTH"), AR_SPACE.names.index("ASPECT_RATIO")
CENTER = np.random.default_rng(2026).uniform(0.15, 0.85, AR_SPACE.dim)
CENTER[[I_DEPTH, I_ASPECT]] = 0.5  # the optimum borders the OOM region, as a real model-size optimum would
WEIGHT = np.array([0.0 if p.type == "categorical" else 1.0 for p in AR_SPACE.params])
WEIGHT[[I_DEPTH, I_ASPECT]] = 3.0
PATTERN = {"SSSL": 0.3, "SSLL": 0.0, "SLSL": 0.2, "LLLL": 0.4, "SSSS": 0.5, "LSSL": 0.25}
MAX_BATCH = max(AR_SPACE.params[AR_SPACE.names.index("DEVICE_BATCH_SIZE")].levels)


def autoresearch(params: dict) -> float | None:
    """The synthetic val_bpb, or None for an OOM."""
    u = AR_SPACE.to_unit(params)
    if (u[I_DEPTH] > 2 / 3 and u[I_ASPECT] > 2 / 3) or (
            params["DEVICE_BATCH_SIZE"] == MAX_BATCH and u[I_DEPTH] + u[I_ASPECT] > 1):  # fmt: skip
        return None
    return float(np.sum(WEIGHT * (u - CENTER) ** 2) + PATTERN[params["WINDOW_PATTERN"]])


def autoresearch_floor() -> float:
    """The exact minimum of `autoresearch`: per parameter, the level (or value) nearest its centre."""
    best_u, floor = CENTER.copy(), min(PATTERN.values())
    for i, p in enumerate(AR_SPACE.params):
        if p.type != "categorical" and p.edges is not None:
            mids = (np.array(p.edges[:-1]) + np.array(p.edges[1:])) / 2
            best_u[i] = mids[np.argmin((mids - CENTER[i]) ** 2)]
            floor += WEIGHT[i] * (best_u[i] - CENTER[i]) ** 2
    argmin = AR_SPACE.from_unit(best_u) | {"WINDOW_PATTERN": min(PATTERN, key=PATTERN.get)}
    value = autoresearch(argmin)
    assert value is not None and abs(value - floor) < 1e-9, (value, floor)  # feasible, and the floor is attained
    return float(floor)


OBJECTIVES = {name: (BBOB_SPACE, bbob(name), 0.0) for name in BBOB}
OBJECTIVES["autoresearch"] = (AR_SPACE, autoresearch, autoresearch_floor())

# -- studies -----------------------------------------------------------------------------------------------------


def record(space: Space, number: int, params: dict, value: float | None, proposer: str, method: str,
           meta: dict) -> TrialRecord:  # fmt: skip
    ok = value is not None
    return TrialRecord(
        number=number, params=params, space_id=space.space_id, method=method, proposer=proposer,
        status="ok" if ok else "oom", val_bpb=value, error=None if ok else "oom", wall_seconds=1.0,
        training_seconds=1.0, peak_memory_mb=None, started_at=0.0, ended_at=1.0, seed=0, meta=meta,
    )  # fmt: skip


def parse(label: str) -> tuple[str, dict]:
    """(method, options) of a proposer label `method[:key=value,...]`."""
    method, _, rest = label.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    return method, options


def run_study(objective: str, label: str, seed: int, trials: int) -> dict:
    """One sequential study; returns its best-so-far regret per trial, failure flags, and ask/tell milliseconds."""
    space, fn, floor = OBJECTIVES[objective]
    method, options = parse(label)
    p = make_proposer(method, space, seed, **options)
    default = space.default()
    history = [record(space, 0, default, fn(default), "default", method, {})]
    asks, tells = [], []
    while True:
        t0 = time.perf_counter()
        p.tell(history[-1])
        tells.append((time.perf_counter() - t0) * 1e3)
        if len(history) == trials:
            break
        t0 = time.perf_counter()
        prop = p.ask(history)
        asks.append((time.perf_counter() - t0) * 1e3)
        meta = {k: v for k, v in prop.meta.items() if k != "llm_turn"}  # as the study journals it
        history.append(record(space, len(history), prop.params, fn(prop.params), prop.proposer, method, meta))
    values = [math.inf if t.failed else t.val_bpb for t in history]
    regret = np.maximum(np.minimum.accumulate(values) - floor, 0.0)
    return {"regret": regret.tolist(), "failed": [t.failed for t in history], "ask_ms": asks, "tell_ms": tells}


def final_regrets(runs: list[dict]) -> np.ndarray:
    return np.array([r["regret"][-1] for r in runs]) + EPS


def compare(a: list[dict], b: list[dict], rng: np.random.Generator) -> dict:
    """Paired by seed: geometric mean ratio of final regrets, its bootstrap 95% CI, Wilcoxon p, seeds a wins."""
    logs = np.log(final_regrets(a)) - np.log(final_regrets(b))
    boot = logs[rng.integers(0, len(logs), (10_000, len(logs)))].mean(axis=1)
    with warnings.catch_warnings():  # tiny samples: scipy warns, and raises when every difference is 0
        warnings.simplefilter("ignore")
        try:
            p = float(wilcoxon(logs).pvalue)
        except ValueError:
            p = math.nan
    return {"ratio": float(np.exp(logs.mean())), "ci": [float(np.exp(q)) for q in np.percentile(boot, [2.5, 97.5])],
            "p": p, "a_better": int(np.sum(logs < 0)), "n": len(logs)}  # fmt: skip


# -- tables ------------------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposers", nargs="+", default=["random", "tpe", "cmaes", "optuna_tpe", "optuna_cmaes"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per objective and proposer")
    parser.add_argument("--trials", type=int, default=60, help="trials per study, the default trial 0 included")
    parser.add_argument("--json", type=Path, help="also write all raw figures here")
    args = parser.parse_args()
    if args.trials < 3:
        parser.error("--trials must be at least 3")
    jax.config.update("jax_platforms", "cpu")  # as the study process does: evosax's arrays are tiny
    checkpoints = sorted({round(args.trials / 3), round(2 * args.trials / 3), args.trials})
    methods = [(m, m, 0) for m in args.proposers]  # (label, proposer, seed offset)
    if "random" in args.proposers:
        methods.append((NOISE[1], "random", 1000))

    start, load_start = time.perf_counter(), os.getloadavg()
    runs: dict[str, dict[str, list[dict]]] = {}
    for objective in args.objectives:
        runs[objective] = {}
        for label, method, offset in methods:
            t0 = time.perf_counter()
            runs[objective][label] = [run_study(objective, method, s + offset, args.trials) for s in range(args.seeds)]
            print(f"{objective} {label}: {args.seeds} seeds x {args.trials} trials in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    total = time.perf_counter() - start

    print(f"{args.seeds} seeds x {args.trials} trials; CPUs: {os.cpu_count()}; load average {load_start[0]:.2f} at "
          f"start, {os.getloadavg()[0]:.2f} at end; {total:.0f} s in all\n")  # fmt: skip
    summary: dict[str, dict] = {}
    for objective, by_label in runs.items():
        header = ["proposer"] + [f"regret @{k}" for k in checkpoints]
        fails = objective == "autoresearch"
        header += ["failures", "late failures", "budget on failures"] if fails else []
        rows = []
        for label in args.proposers:
            curves = np.array([r["regret"] for r in by_label[label]])
            ddof = 1 if len(curves) > 1 else 0  # the sample std over seeds
            at = {k: (float(curves[:, k - 1].mean()), float(curves[:, k - 1].std(ddof=ddof))) for k in checkpoints}
            failed = float(np.mean([f for r in by_label[label] for f in r["failed"]]))
            late = float(np.mean([f for r in by_label[label] for f in r["failed"][args.trials // 2 :]]))
            cost = failed * FAILED_COST
            budget = cost / (cost + 1 - failed)
            summary.setdefault(objective, {})[label] = {"regret_at": at, "failure_rate": failed,
                                                        "late_failure_rate": late, "failure_budget_share": budget}
            rows.append([label] + [f"{m:.3g} ± {s:.2g}" for m, s in at.values()]
                        + ([f"{failed:.1%}", f"{late:.1%}", f"{budget:.1%}"] if fails else []))  # fmt: skip
        floor = OBJECTIVES[objective][2]
        cost = f"; a failure costs {FAILED_COST:.2f} of a success" if fails else ""
        print(f"### {objective} (mean ± std over seeds of best-so-far regret; floor {floor:.6g}{cost})\n")
        print(table(header, rows) + "\n")

    rng = np.random.default_rng(0)
    pairs = [(a, f"optuna_{parse(a)[0]}") for a in args.proposers
             if parse(a)[0] in PAIRED and f"optuna_{parse(a)[0]}" in args.proposers]  # fmt: skip
    pairs += [(a, parse(a)[0]) for a in args.proposers if a != parse(a)[0] and parse(a)[0] in args.proposers]
    pairs += [(m, "random") for m in args.proposers if m != "random" and "random" in args.proposers]
    pairs += [NOISE] if "random" in args.proposers else []
    pairs = list(dict.fromkeys(pairs))  # a random variant is paired with random by both rules
    ratios, rows = [], []
    for objective in args.objectives:
        for a, b in pairs:
            c = compare(runs[objective][a], runs[objective][b], rng) | {"objective": objective, "a": a, "b": b}
            ratios.append(c)
            name = "random vs random (seeds +1000, noise floor)" if (a, b) == NOISE else f"{a} vs {b}"
            rows.append([objective, name, f"{c['ratio']:.3g}", f"{c['ci'][0]:.3g} – {c['ci'][1]:.3g}",
                         f"{c['p']:.3g}", f"{c['a_better']}/{c['n']}"])  # fmt: skip
    if rows:
        print(f"### paired by seed: final regret ratio a/b (< 1: a better; geometric mean, regrets + {EPS:g})\n")
        print(table(["objective", "a vs b", "ratio", "95% CI", "Wilcoxon p", "a better"], rows) + "\n")

    rows, timing = [], {}
    for label in args.proposers:
        asks = np.concatenate([r["ask_ms"] for by_label in runs.values() for r in by_label[label]])
        tells = np.concatenate([r["tell_ms"] for by_label in runs.values() for r in by_label[label]])
        timing[label] = {"asks": len(asks), "tells": len(tells), "ask_ms_median": float(np.median(asks)),
                         "ask_ms_mean": float(asks.mean()), "tell_ms_median": float(np.median(tells)),
                         "tell_ms_mean": float(tells.mean())}  # fmt: skip
        t = timing[label]
        rows.append([label, str(t["asks"]), f"{t['ask_ms_median']:.3f}", f"{t['ask_ms_mean']:.3f}",
                     f"{t['tell_ms_median']:.3f}", f"{t['tell_ms_mean']:.3f}"])  # fmt: skip
    print("### milliseconds per call, over all objectives and seeds\n")
    print(table(["proposer", "asks", "ask median", "ask mean", "tell median", "tell mean"], rows))

    if args.json:
        args.json.write_text(json.dumps({
            "seeds": args.seeds, "trials": args.trials, "checkpoints": checkpoints, "eps": EPS, "seconds": total,
            "cpus": os.cpu_count(), "floors": {o: OBJECTIVES[o][2] for o in args.objectives},
            "summary": summary, "ratios": ratios, "timing": timing, "runs": runs,
        }) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
