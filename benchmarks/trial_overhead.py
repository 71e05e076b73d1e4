"""Where a trial's wall time goes besides training: process start and imports, setup, compilation, evaluation and
the rest, with a cold and with a warm persistent compilation cache.

    python benchmarks/trial_overhead.py [--budget SECONDS] [--repeats 3]

Every trial runs as a study trial does (`jaxhpo.trial.trial_config` + `run_trial`: a process of its own under the
study's memory limit, config composed from hydra_configs/config.yaml exactly as `python -m jaxhpo` composes it:
model=tiny, space=tiny), with the study's trial budget (on a CPU its FLOP budget: 6-7.5 s of training on 2 cores
here, 2026-12-07) or `--budget` seconds of training, started in each of two ways, side by side:

    new interpreter   `python -m jaxhpo.trial DIR` (trial.fork_server=false)
    fork server       forked from a process that has imported the trainer (jaxhpo.forkserver; the default)

Each repeat takes, for each way, a fresh, empty compilation-cache folder and runs four trials in it, one after
the other:

    cold              the space's default configuration, nothing cached
    warm, same        the same configuration again: its four programs come from jaxhpo's cache of compiled
                      programs (model.programs), without tracing; a shape seen twice, so the initial parameters
                      it draws are kept
    warm, other LRs   the default with its four learning rates halved: learning rates are inputs of the compiled
                      steps, not constants, so it too should compile nothing; it reads the kept parameters
    warm, traced      the same configuration with jaxhpo's cache of programs emptied first: the four programs
                      are traced and lowered, then loaded from XLA's persistent cache (what every warm trial did
                      before model.programs); the difference to "warm, same" is what that cache saves

Each trial's wall time (`Outcome.wall_seconds`, subprocess start to exit) is split with its result.json:

    start+imports     wall - total_seconds: interpreter start, imports, JAX start-up, process exit
    setup             setup_seconds: memory limit, cache, corpus (already tokenized, as the study does before
                      trial 0)
    compile           compile_seconds: AOT compilation of the four programs, the initial parameters, the
                      optimizer state, the train step and the eval step (or their loads from the caches; the
                      parameters themselves, where the cache keeps them)
    other             total - setup - compile - training - eval: pre-flight, running the initialization, the
                      input pipeline's start, writing result.json
    eval              eval_seconds: scoring val_bpb
    training          training_seconds: the budget (under a time budget overshot by at most one step)

The overhead in seconds is about independent of the budget, so its share of the wall time falls as the budget
grows: at the study default of 15 s (or the original 300 s) recompute the shares from the seconds column. The
per-run lines give the hits and misses of the four programs in jaxhpo's cache of programs and in XLA's (result.json's
`compile_cache`, counted up to the end of their compilation) and the files in the cache folder after the run. Timings on a shared CPU are noisy;
the table gives means over the repeats with their min-max range.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import jaxhpo.config  # noqa: F401 - registers the structured-config schemas composed against
from jaxhpo.forkserver import ForkServer
from jaxhpo.space import Space
from jaxhpo.trial import Outcome, run_trial, trial_config
from model import programs
from model.config import TrainConfig
from model.data import load_corpus

CASES = ("cold", "warm, same", "warm, other LRs", "warm, traced")
LAUNCHES = ("new interpreter", "fork server")
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
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds per trial (default: the study's own trial budget)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with initialize_config_module("hydra_configs", version_base=None):
        cfg = OmegaConf.to_object(compose("config", overrides=["+method=random"]))
    space = Space.from_config(cfg.space)
    base = TrainConfig(model=cfg.model, optim=cfg.optim, data=cfg.data, seed=cfg.seed)
    load_corpus(cfg.data, cfg.model.vocab_size)
    default = space.default()
    configs = {"cold": default, "warm, same": default,
               "warm, other LRs": {**default, **{k: default[k] / 2 for k in LR_PARAMS}},
               "warm, traced": default}  # fmt: skip

    runs: dict[tuple[str, str], list[dict[str, float]]] = {(l, c): [] for l in LAUNCHES for c in CASES}
    budget = {"budget": "time", "time_budget_s": args.budget} if args.budget is not None else {}
    unit = f"{args.budget:g} s" if budget else f"the study's ({cfg.trial.budget or 'auto'}, flops {cfg.trial.budget_flops:g})"
    print(f"model={cfg.model.depth}x{cfg.model.model_dim} space={space.name} budget {unit}, "
          f"{args.repeats} repeats\n")  # fmt: skip
    print(f"{'repeat':>6}  {'started by':<17}{'case':<16}{'status':<8}{'wall s':>8}{'compile s':>11}"
          f"{'ours hit/miss':>16}{'XLA hit/miss':>13}{'cache files':>13}")  # fmt: skip
    forks = ForkServer()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for launch in LAUNCHES:  # interleaved, so that a change in the machine's load hits both alike
                cache_dir = Path(tmp) / f"xla_cache{rep}-{launch.replace(' ', '_')}"
                trial = dataclasses.replace(cfg.trial, **budget, compile_cache_dir=str(cache_dir))
                for case in CASES:
                    train_cfg, _ = trial_config(base, space, configs[case], trial)
                    if case == "warm, traced":
                        shutil.rmtree(cache_dir / programs.FOLDER)
                    trial_dir = Path(tmp) / f"{rep}" / launch.replace(" ", "_") / case.replace(" ", "").replace(",", "_")
                    outcome = run_trial(train_cfg, trial_dir, forks=forks if launch == "fork server" else None)
                    xla = outcome.result.get("compile_cache", {})
                    ours = xla.get("programs", {})
                    files = len(list(cache_dir.iterdir()))
                    print(f"{rep:>6}  {launch:<17}{case:<16}{outcome.status:<8}{outcome.wall_seconds:>8.1f}"
                          f"{outcome.result.get('compile_seconds', float('nan')):>11.2f}"
                          f"{ours.get('hits', '-'):>12}/{ours.get('misses', '-'):<3}"
                          f"{xla.get('hits', '-'):>9}/{xla.get('misses', '-'):<3}{files:>13}", flush=True)  # fmt: skip
                    if outcome.status != "ok":
                        raise SystemExit(f"{launch}, {case}: {outcome.status}: {outcome.error}")
                    runs[launch, case].append({**parts(outcome), "wall": outcome.wall_seconds})
    forks.close()

    for launch in LAUNCHES:
        print(f"\nstarted by {launch}: mean seconds [min-max] and share of the mean wall time, {args.repeats} runs "
              "per case\n")  # fmt: skip
        print(f"{'':<15}" + "".join(f"{case:>25}" for case in CASES))
        for part in (*PARTS, "wall"):
            cells = []
            for case in CASES:
                xs, wall = [r[part] for r in runs[launch, case]], statistics.mean(r["wall"] for r in runs[launch, case])
                share = f"{statistics.mean(xs) / wall:4.0%}" if part != "wall" else ""
                cells.append(f"{statistics.mean(xs):6.2f} [{min(xs):5.1f}-{max(xs):5.1f}] {share:>4}")
            print(f"{part:<15}" + "".join(f"{c:>25}" for c in cells))
        not_training = [1 - statistics.mean(r["training"] for r in runs[launch, c])
                        / statistics.mean(r["wall"] for r in runs[launch, c]) for c in CASES]  # fmt: skip
        print(f"{'not training':<15}" + "".join(f"{x:>25.0%}" for x in not_training))
    wall = {key: statistics.mean(r["wall"] for r in rs) for key, rs in runs.items()}
    ratios = ", ".join(f"{c} {wall['fork server', c] / wall['new interpreter', c]:.2f}" for c in CASES)
    print(f"\nfork server / new interpreter, mean wall time: {ratios}")


if __name__ == "__main__":
    main()
