"""Where a trial's wall time goes besides training: process start and imports, setup, compilation, evaluation and
the rest, with a cold and with a warm persistent compilation cache.

    python benchmarks/trial_overhead.py [--budget 5] [--repeats 3]

Every trial runs as a study trial does (`jaxhpo.trial.trial_config` + `run_trial`: a fresh subprocess under the
study's memory limit, config composed from hydra_configs/config.yaml exactly as `python -m jaxhpo` composes it:
model=tiny, space=tiny), with `--budget` seconds of training. Each repeat takes a fresh, empty compilation-cache
folder and runs three trials in it, one after the other:

    cold              the space's default configuration, nothing cached
    warm, same        the same configuration again: every program comes from the cache
    warm, other LRs   the default with its four learning rates halved: learning rates are inputs of the compiled
                      steps, not constants, so it too should compile nothing

Each trial's wall time (`Outcome.wall_seconds`, subprocess start to exit) is split with its result.json:

    start+imports     wall - total_seconds: interpreter start, imports, JAX start-up, process exit
    setup             setup_seconds: memory limit, cache, corpus (already tokenized, as the study does before
                      trial 0), abstract model and optimizer state
    compile           compile_seconds: AOT compilation of the train and eval steps (or cache loads)
    other             total - setup - compile - training - eval: pre-flight, parameter and optimizer
                      initialization (eagerly run operations, each compiled as a small program of its own, which
                      the persistent cache holds too), the input pipeline's start, writing result.json
    eval              eval_seconds: scoring val_bpb
    training          training_seconds: the budget, overshot by at most one step

The overhead in seconds is about independent of the budget, so its share of the wall time falls as the budget
grows: at the study default of 15 s (or the original 300 s) recompute the shares from the seconds column. The
per-run lines give the cache hits and misses of the two step programs (result.json's `compile_cache`, counted up to
the end of their compilation) and the files in the cache folder after the run. Timings on a shared CPU are noisy;
the table gives means over the repeats with their min-max range.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import jaxhpo.config  # noqa: F401 - registers the structured-config schemas composed against
from jaxhpo.space import Space
from jaxhpo.trial import Outcome, run_trial, trial_config
from model.config import TrainConfig
from model.data import load_corpus

CASES = ("cold", "warm, same", "warm, other LRs")
PARTS = ("start+imports", "setup", "compile", "other", "eval", "training")
LR_PARAMS = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")


def parts(outcome: Outcome) -> dict[str, float]:
    """The wall time of a finished trial split into PARTS (seconds)."""
    r = outcome.result
    inside = r["setup_seconds"] + r["compile_seconds"] + r["training_seconds"] + r["eval_seconds"]
    return {
        "start+imports": outcome.wall_seconds - r["total_seconds"],
        "setup": r["setup_seconds"],
        "compile": r["compile_seconds"],
        "other": r["total_seconds"] - inside,
        "eval": r["eval_seconds"],
        "training": r["training_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=5.0, help="training seconds per trial")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with initialize_config_module("hydra_configs", version_base=None):
        cfg = OmegaConf.to_object(compose("config", overrides=["+method=random"]))
    space = Space.from_config(cfg.space)
    base = TrainConfig(model=cfg.model, optim=cfg.optim, data=cfg.data, seed=cfg.seed)
    load_corpus(cfg.data, cfg.model.vocab_size)
    default = space.default()
    configs = {"cold": default, "warm, same": default,
               "warm, other LRs": {**default, **{k: default[k] / 2 for k in LR_PARAMS}}}  # fmt: skip

    runs: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    print(f"model={cfg.model.depth}x{cfg.model.model_dim} space={space.name} budget {args.budget:g}s, "
          f"{args.repeats} repeats\n")  # fmt: skip
    print(f"{'repeat':>6}  {'case':<16}{'status':<8}{'wall s':>8}{'compile s':>11}{'steps hit/miss':>16}"
          f"{'cache files':>13}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            trial = dataclasses.replace(cfg.trial, time_budget_s=args.budget,
                                        compile_cache_dir=str(Path(tmp) / f"xla_cache{rep}"))  # fmt: skip
            for case in CASES:
                train_cfg, _ = trial_config(base, space, configs[case], trial)
                outcome = run_trial(train_cfg, Path(tmp) / f"{rep}" / case.replace(" ", "").replace(",", "_"))
                cache = outcome.result.get("compile_cache", {})
                files = len(list(Path(trial.compile_cache_dir).iterdir()))
                print(f"{rep:>6}  {case:<16}{outcome.status:<8}{outcome.wall_seconds:>8.1f}"
                      f"{outcome.result.get('compile_seconds', float('nan')):>11.2f}"
                      f"{cache.get('hits', '-'):>12}/{cache.get('misses', '-'):<3}{files:>13}", flush=True)  # fmt: skip
                if outcome.status != "ok":
                    raise SystemExit(f"{case}: {outcome.status}: {outcome.error}")
                runs[case].append({**parts(outcome), "wall": outcome.wall_seconds})

    print(f"\nmean seconds [min-max] and share of the mean wall time, {args.repeats} runs per case\n")
    print(f"{'':<15}" + "".join(f"{case:>25}" for case in CASES))
    for part in (*PARTS, "wall"):
        cells = []
        for case in CASES:
            xs, wall = [r[part] for r in runs[case]], statistics.mean(r["wall"] for r in runs[case])
            share = f"{statistics.mean(xs) / wall:4.0%}" if part != "wall" else ""
            cells.append(f"{statistics.mean(xs):6.2f} [{min(xs):5.1f}-{max(xs):5.1f}] {share:>4}")
        print(f"{part:<15}" + "".join(f"{c:>25}" for c in cells))
    not_training = [1 - statistics.mean(r["training"] for r in runs[c]) / statistics.mean(r["wall"] for r in runs[c])
                    for c in CASES]  # fmt: skip
    print(f"{'not training':<15}" + "".join(f"{x:>25.0%}" for x in not_training))


if __name__ == "__main__":
    main()
