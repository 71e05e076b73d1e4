"""Real trials of model=tiny over space=tiny, the data a surrogate benchmark is fitted on: a table of every trial's
configuration, status (real OOMs included), val_bpb, wall and training seconds.

    python benchmarks/surrogate_data.py [--parts design noise cloud] [--design 512] [--cloud 128] [--seeds 4]
                                        [--set trial.budget=flops trial.budget_flops=4.5e11 ...]

Three parts, each made of ordinary jaxhpo studies under the default study's settings (its trial budget and
memory limit) and the overrides given with `--set`, in `--work` (default outputs/surrogate_data/):
- design: a scrambled Sobol design over the whole space (`method=sobol`), `--design` trials after trial 0;
- cloud: a Sobol design in a box around the default configuration, ±`--radius` of each range in the unit cube
  (categoricals keep every choice), where good configurations are dense;
- noise: the default and the first four configurations of the design that trained, each with `--seeds` seeds
  (a one-trial study per configuration and seed: its trial 0), to measure the spread between seeds.

Learning curves, what a pruned surrogate study reports at its rungs (`surrogate.curves`), are measured the same
way with a pruner that never has enough finished trials to judge, so that every trial reports at each rung and
runs to its end (the `rungs` column):

    python benchmarks/surrogate_data.py --parts design cloud --design 48 --cloud 32 --work outputs/surrogate_curves \
        --out benchmarks/data/surrogate_tiny_curves.csv --set study.pruner=median study.pruner_min_trials=1000000000 \
        'study.pruner_rungs=[0.0556,0.1111,0.1667,0.25,0.3333,0.5,0.6667,0.75,0.9]'

A study resumes where it stopped, so running the same command again continues (`--table-only` rewrites the table
from the journals so far, also while a study runs); after every study the table
`--out` (benchmarks/data/surrogate_tiny.csv) is rewritten from all the journals so far, with a sidecar .json
holding the command, the trainer's commit and settings. Stop it at any time; commit the table as it grows.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from jaxhpo.journal import JOURNAL_FILE, Journal
from jaxhpo.space import Space

REPO = Path(__file__).resolve().parents[1]
SPACE_FILE = REPO / "hydra_configs" / "space" / "tiny.yaml"
COLUMNS = ("part", "study", "seed", "trial", "status", "val_bpb", "wall_seconds", "training_seconds", "peak_memory_mb",
           "error", "rungs")  # fmt: skip


def space_yaml(name: str, params: dict) -> str:
    return yaml.safe_dump({"defaults": ["space_schema", "_self_"], "name": name, "params": params}, sort_keys=False)


def tiny_params() -> dict:
    cfg = yaml.safe_load(SPACE_FILE.read_text())
    return cfg["params"]


def cloud_params(radius: float) -> dict:
    """space=tiny with every numeric range cut to the default ± radius of the range in unit coordinates."""
    params = tiny_params()
    space = Space("tiny", params)
    for p in space.params:
        if p.type == "categorical":
            continue
        u = p.to_unit(p.default)
        low, high = p.from_unit(max(0.0, u - radius)), p.from_unit(min(1.0, u + radius))
        if low == high:  # a grid too coarse for the box: keep the default's neighbours
            levels = p.levels
            i = levels.index(p.default)
            low, high = levels[max(0, i - 1)], levels[min(len(levels) - 1, i + 1)]
        params[p.name] = {**params[p.name], "low": low, "high": high}
    return params


def run_study(work: Path, conf: Path, name: str, method: str, seed: int, trials: int, space: str,
              overrides: list[str]) -> None:  # fmt: skip
    """One jaxhpo study in work/name (resumed if it exists); a failing study stops the whole script."""
    args = [sys.executable, "-m", "jaxhpo", f"+method={method}", f"seed={seed}", f"space={space}",
            f"--config-dir={conf}", f"hydra.run.dir={work / name}", f"study.max_trials={trials}", "study.budget_s=null",
            f"trial.compile_cache_dir={work / 'xla_cache'}", *overrides]  # fmt: skip
    print(f"[surrogate_data] {name}: {trials} trials", flush=True)
    proc = subprocess.run(args, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"study {name} failed (exit {proc.returncode}); fix it and run the same command again")


def journals(work: Path) -> list[tuple[str, str, Path]]:
    """(part, study name, journal path) of every study in `work`, in a stable order."""
    return [(j.parent.name.split("-")[0], j.parent.name, j) for j in sorted(work.glob(f"*/{JOURNAL_FILE}"))]


def write_table(work: Path, out: Path, command: str) -> int:
    """Rewrite `out` from every journal in `work`; returns the number of trials written."""
    names = list(yaml.safe_load(SPACE_FILE.read_text())["params"])
    rows, trainer, space = [], None, None
    for part, study, path in journals(work):
        with Journal(path, readonly=True) as journal:
            info = journal.study_info()
            trainer = trainer or info.get("trainer")
            if part == "design":  # the whole space, which the other parts' narrower ones lie in
                space = info.get("space")
            for t in journal.trials():
                rows.append({"part": part, "study": study, "seed": t.seed, "trial": t.number, "status": t.status,
                             "val_bpb": t.val_bpb, "wall_seconds": round(t.wall_seconds, 2),
                             "training_seconds": t.training_seconds, "peak_memory_mb": t.peak_memory_mb,
                             "error": (t.error or "")[:200], "rungs": rungs_column(t), **t.params})  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, *names])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    # The trainer's commit: the last one that changed what a trial runs (the model package and the trial runner).
    commit = subprocess.run(["git", "log", "-1", "--format=%H", "--", "model", "jaxhpo/trial.py"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "trainer_commit": commit, "trainer": trainer, "space_name": "tiny", "space": space,
         "trials": len(rows),
         "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")  # fmt: skip
    return len(rows)


def rungs_column(t) -> str:
    """The trial's learning curve, [[fraction, held-out bpb], ...] as JSON, where it reported at rungs (a study run
    with `--set study.pruner_rungs=[...]`); empty otherwise."""
    rungs = [[r["fraction"], r["value"]] for r in t.result.get("rungs", [])]
    return json.dumps(rungs, separators=(",", ":")) if rungs else ""


def noise_configs(work: Path, n: int) -> list[dict]:
    """The default configuration and the first n - 1 design configurations that trained."""
    space = Space("tiny", tiny_params())
    configs = [space.default()]
    path = work / "design" / JOURNAL_FILE
    if path.exists():
        with Journal(path, readonly=True) as journal:
            configs += [t.params for t in journal.trials() if t.number > 0 and t.status == "ok"][: n - 1]
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["design", "noise", "cloud"], choices=["design", "cloud", "noise"])
    parser.add_argument("--design", type=int, default=512, help="Sobol trials over the whole space")
    parser.add_argument("--cloud", type=int, default=128, help="Sobol trials in the box around the default")
    parser.add_argument("--radius", type=float, default=0.15, help="the box's half-width, in unit coordinates")
    parser.add_argument("--seeds", type=int, default=4, help="seeds of each noise configuration")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "surrogate_data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "data" / "surrogate_tiny.csv")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every study")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from the journals so far")
    args = parser.parse_args()
    command = "python benchmarks/surrogate_data.py " + " ".join(a for a in sys.argv[1:] if a != "--table-only")
    if args.table_only:
        print(f"[surrogate_data] table: {write_table(args.work, args.out, command)} trials in {args.out}")
        return
    conf = args.work / "conf"
    (conf / "space").mkdir(parents=True, exist_ok=True)
    (conf / "space" / "surrogate_cloud.yaml").write_text(space_yaml("surrogate_cloud", cloud_params(args.radius)))
    for part in dict.fromkeys(args.parts):  # in the order given: `--parts design noise cloud` measures noise early
        if part == "noise":
            run_noise(args, conf, command)
            continue
        trials, space = (args.design, "tiny") if part == "design" else (args.cloud, "surrogate_cloud")
        run_study(args.work, conf, part, "sobol", 0, trials + 1, space, args.set)
        print(f"[surrogate_data] table: {write_table(args.work, args.out, command)} trials in {args.out}", flush=True)


def run_noise(args: argparse.Namespace, conf: Path, command: str) -> None:
    """One-trial studies of each noise configuration under `args.seeds` seeds."""
    for i, config in enumerate(noise_configs(args.work, 5)):
        params = tiny_params()
        for name, value in config.items():
            params[name] = {**params[name], "default": value}
        (conf / "space" / f"surrogate_noise{i}.yaml").write_text(space_yaml(f"surrogate_noise{i}", params))
        for seed in range(args.seeds):
            run_study(args.work, conf, f"noise-c{i}-s{seed}", "random", seed, 1, f"surrogate_noise{i}", args.set)
        print(f"[surrogate_data] table: {write_table(args.work, args.out, command)} trials", flush=True)


if __name__ == "__main__":
    main()
