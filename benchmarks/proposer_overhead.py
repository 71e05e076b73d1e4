"""Proposer overhead: milliseconds per ask and per tell for random, TPE and CMA-ES at 50, 200 and 500 finished trials
in the 14-D autoresearch space, and what that costs as a share of a trial.

    python benchmarks/proposer_overhead.py [--methods random tpe cmaes] [--sizes 50 200 500] [--repeats 22]
                                           [--trial-seconds 300 15] [--compile-cache DIR] [--json PATH]

What is measured. For each method one sequential study runs as `jaxhpo.study` runs it, without the trainer: trial 0
is the space default, told; then `ask(history)`, the trial's result, `tell(record)`, until max(sizes) + repeats
trials. Every ask and every tell is timed on its own (time.perf_counter; building the TrialRecord and the objective
are not timed). The row for N summarizes the `repeats` trials asked at histories of N, N + 1, ..., N + repeats - 1
finished trials: median and p90 of the ask and of the tell, and their mean per trial, which is what a study pays on
average and so what the share of a trial is computed from (mean ask + mean tell over --trial-seconds: 300 s is
autoresearch's training budget on an H100, 15 s the embedded default, trial.time_budget_s). A trial's wall time
is longer than its training budget (startup, compile, evaluation), so the shares are upper bounds.

The history is the proposer's own: every trial after the default is one it asked for (TPE's too: its asks at
up to 500 trials take tens of seconds in all), scored by benchmarks/proposer_quality.py's synthetic autoresearch
objective (a shifted quadratic in the unit encoding with an "OOM" region of large models and large batches), so
the proposers see the successes and failures they would see in a study. CMA-ES's state is a function of what it was told, so its rows are after N real tells.
The repeats default, 22, is two CMA-ES generations (11 members in 14-D): the one tell in 11 that updates
evosax's state and samples the next generation is in every window in its true proportion.

One-off cost. CMA-ES jit-compiles evosax's init and ask when the first proposer of a (population, dimension) shape is
built, and evosax's tell at its first generation update. That is paid once per process, so it is kept out of the
rows: a first proposer is built and runs the first 12 trials of the study (the default, the rest of generation 0,
one ask of generation 1), timed as a whole; then a second proposer does the same (same seed, nothing left to
compile); the difference is the one-off cost. Both come before the measured study. Random and TPE compile nothing,
so theirs is about zero (noise either way). A study keeps these programs in the persistent compilation cache its
trials share (`trial.compile_cache_dir`): `--compile-cache DIR` uses one, so a second run with the same DIR shows
the first-in-process cost when a resumed study or a grid's next study loads them instead (run it twice:
`--methods cmaes --sizes 12 --repeats 1 --compile-cache /tmp/c`).

JAX runs on the CPU, as in the study process (jax_platforms=cpu). Timings are wall-clock on whatever else the
machine is doing: the load average at start and end is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from proposer_quality import AR_SPACE as SPACE  # benchmarks/, on sys.path when run as a script
from proposer_quality import autoresearch as objective

from jaxhpo.journal import TrialRecord
from jaxhpo.proposers import make_proposer
from jaxhpo.proposers.cmaes import default_population_size
from model import device

# Trial 0 (the default, injected) and 10 asked trials complete CMA-ES's first generation, whose last tell runs
# evosax's first update; one more ask of the next generation. Every jit compile of CMA-ES happens in these.
WARMUP_TRIALS = default_population_size(SPACE.dim) + 1


def record(number: int, params: dict, proposer: str, method: str) -> TrialRecord:
    value = objective(params)
    ok = value is not None
    return TrialRecord(
        number=number, params=params, space_id=SPACE.space_id, method=method, proposer=proposer,
        status="ok" if ok else "oom", val_bpb=value, error=None if ok else "oom", wall_seconds=1.0,
        training_seconds=1.0, peak_memory_mb=None, started_at=0.0, ended_at=1.0, seed=0,
    )  # fmt: skip


def run_study(method: str, seed: int, trials: int) -> tuple[list[float], list[float]]:
    """A study of `trials` trials; returns (ask seconds, tell seconds), indexed by trial number (trial 0, the
    default, is told but not asked: its ask time is 0)."""
    p = make_proposer(method, SPACE, seed)
    history = [record(0, SPACE.default(), "default", method)]
    t0 = time.perf_counter()
    p.tell(history[0])
    asks, tells = [0.0], [time.perf_counter() - t0]
    while len(history) < trials:
        t0 = time.perf_counter()
        prop = p.ask(history)
        asks.append(time.perf_counter() - t0)
        r = record(len(history), prop.params, prop.proposer, method)
        t0 = time.perf_counter()
        p.tell(r)
        tells.append(time.perf_counter() - t0)
        history.append(r)
    return asks, tells


def timed_warmup(method: str, seed: int) -> float:
    """Seconds to build a proposer and run the first WARMUP_TRIALS trials of a study with it."""
    t0 = time.perf_counter()
    run_study(method, seed, WARMUP_TRIALS)
    return time.perf_counter() - t0


def measure(method: str, sizes: list[int], repeats: int, seed: int) -> dict:
    first, again = timed_warmup(method, seed), timed_warmup(method, seed)
    t0 = time.perf_counter()
    asks, tells = run_study(method, seed, max(sizes) + repeats)
    study_seconds = time.perf_counter() - t0
    rows = []
    for n in sizes:
        a, t = np.array(asks[n : n + repeats]) * 1e3, np.array(tells[n : n + repeats]) * 1e3
        rows.append({
            "trials": n, "ask_ms_median": float(np.median(a)), "ask_ms_p90": float(np.percentile(a, 90)),
            "tell_ms_median": float(np.median(t)), "tell_ms_p90": float(np.percentile(t, 90)),
            "per_trial_ms_mean": float(a.mean() + t.mean()),
        })  # fmt: skip
    return {"method": method, "first_ms": first * 1e3, "again_ms": again * 1e3, "one_off_ms": (first - again) * 1e3,
            "study_seconds": study_seconds, "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["random", "tpe", "cmaes"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[50, 200, 500], help="finished trials")
    parser.add_argument("--repeats", type=int, default=22, help="trials timed per size")
    parser.add_argument("--trial-seconds", nargs="+", type=float, default=[300.0, 15.0],
                        help="trial lengths to express the overhead as a share of")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile-cache", type=Path, help="the persistent compilation cache to use (as a study does)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    # As the study process does (jaxhpo.__main__.prepare_process): evosax's arrays are tiny, the GPU is the trainer's.
    jax.config.update("jax_platforms", "cpu")
    if args.compile_cache:
        device.enable_compile_cache(str(args.compile_cache))
    if min(args.sizes) < WARMUP_TRIALS:
        parser.error(f"--sizes must be at least {WARMUP_TRIALS}: earlier trials hold the one-off costs")

    load_start = os.getloadavg()
    print(f"space: {SPACE.name} ({SPACE.dim}-D)  backend: {jax.default_backend()}  CPUs: {os.cpu_count()}  "
          f"load average: {load_start[0]:.2f}")  # fmt: skip
    print(f"per size: {args.repeats} trials timed; ms per call; share = (mean ask + mean tell) / trial\n")
    shares = "".join(f"{f'of {s:g} s':>10}" for s in args.trial_seconds)
    print(f"{'method':<8}{'trials':>7}{'ask med':>10}{'ask p90':>10}{'tell med':>10}{'tell p90':>10}"
          f"{'per trial':>11}{shares}")  # fmt: skip
    results = []
    for method in args.methods:
        result = measure(method, args.sizes, args.repeats, args.seed)
        results.append(result)
        for row in result["rows"]:
            per_trial = row["per_trial_ms_mean"]
            print(
                f"{method:<8}{row['trials']:>7}{row['ask_ms_median']:>10.3f}{row['ask_ms_p90']:>10.3f}"
                f"{row['tell_ms_median']:>10.3f}{row['tell_ms_p90']:>10.3f}{per_trial:>11.3f}"
                + "".join(f"{per_trial / 1e3 / s:>10.3%}" for s in args.trial_seconds)
            )

    print(f"\none-off cost: building a proposer and its first {WARMUP_TRIALS} trials, first in the process vs again")
    print(f"{'method':<8}{'first ms':>10}{'again ms':>10}{'one-off ms':>12}{'whole study s':>15}")
    for r in results:
        print(f"{r['method']:<8}{r['first_ms']:>10.1f}{r['again_ms']:>10.1f}{r['one_off_ms']:>12.1f}"
              f"{r['study_seconds']:>15.1f}")  # fmt: skip
    load_end = os.getloadavg()
    print(f"\nload average at end: {load_end[0]:.2f}")

    if args.json:
        args.json.write_text(json.dumps({
            "space": SPACE.name, "dim": SPACE.dim, "backend": jax.default_backend(), "cpus": os.cpu_count(),
            "load_average": [load_start[0], load_end[0]], "repeats": args.repeats, "seed": args.seed,
            "trial_seconds": args.trial_seconds, "warmup_trials": WARMUP_TRIALS, "methods": results,
        }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
