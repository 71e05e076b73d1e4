"""How much of a study's trial time goes to failed trials, with the memory pre-flight off and on.

    python benchmarks/failure_waste.py [--methods random tpe] [--trials 6] [--budget 3] [--limit-gb 3] [--seed 0]

For each method, two real studies (`python -m jaxhpo +method=M space=tiny trial.preflight=false|true
trial.memory_limit_gb=3 study.max_trials=6 trial.time_budget_s=3 study.budget_s=null seed=0`, one after the other,
one worker), read back from their journals. Under a 3 GB address-space limit much of the tiny space really runs out
of memory on this CPU: by benchmarks/preflight_calibration.py, depth 6 at aspect ratio 64, depth 4 at 128, or
depth 2 at 128 with a device batch of 64 already do. With the pre-flight off such a trial starts, compiles,
allocates and dies (`oom`, a real OOM); with it on, it stops after compiling (`oom`, predicted) -- or, where the
prediction is wrong, trains anyway or OOMs for real.

Pairing. Both studies of a method have the same seed. Random search draws trial k's configuration from (seed, k)
alone, so its two studies propose exactly the same configurations, and the difference between them is the
pre-flight's and timing noise's alone. TPE's first `--tpe-startup` trials are seeded random draws too (paired
alike); after them its proposals depend on the outcomes, which differ between off and on, so its studies can
diverge -- though TPE uses only the ranks of the outcomes, and any failure ranks last, so they diverge only where
the ranks differ. `--tpe-startup` (default 4) is lowered from the method's 10 so that TPE proper proposes part of
a short study.

Compilation cache. All studies use one cache folder, warmed once by a one-trial study of the default configuration
(trial 0 of every study) and put back to that warm state before each study, so each finds the same cache whatever
order the studies run in: left to grow, it would hand the second study of a pair cache hits for every configuration
the first compiled and bias the comparison. Beyond trial 0 every shape compiles cold, as in a real study, where
configurations rarely repeat a shape. (The folder is restored in place rather than copied: JAX's cache key holds
the cache folder's path, by way of the GPU autotune-cache option it derives from it, so a copy elsewhere misses.)

The table: per (method, pre-flight) the trials, the failed share and the OOM share split into predicted and real
OOMs, the seconds spent on failed trials and their share of the summed trial wall time (`wall_seconds`: subprocess
start to exit, what `study.budget_s` counts), the mean wall time of a failed and of an ok trial, and the whole
study's wall time (its own start-up included). Failures other than OOMs are listed with their errors. Timings on
a shared CPU are noisy; compare shares and ratios, and the paired trials line by line.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxhpo.journal import JOURNAL_FILE, Journal, TrialRecord

REPO = Path(__file__).resolve().parents[1]


def run_study(run_dir: Path, cache_dir: Path, method: str, preflight: bool, args, trials: int) -> float:
    """Run one study in `run_dir` to its end; returns its wall seconds."""
    overrides = [
        f"+method={method}", "space=tiny", f"seed={args.seed}", f"study.max_trials={trials}", "study.budget_s=null",
        f"trial.time_budget_s={args.budget}", f"trial.memory_limit_gb={args.limit_gb}",
        f"trial.preflight={str(preflight).lower()}", f"trial.compile_cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    if method == "tpe":
        overrides.append(f"method.options.n_startup_trials={args.tpe_startup}")
    run_dir.mkdir(parents=True)
    t0 = time.time()
    with open(run_dir / "study.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "jaxhpo", *overrides], cwd=REPO, stdout=log, stderr=log).returncode
    if rc:
        tail = (run_dir / "study.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"study {run_dir.name} exited with {rc}:\n" + "\n".join(tail))
    return time.time() - t0


def status(t: TrialRecord) -> str:
    return "oom (pred)" if t.status == "oom" and t.result.get("predicted") else t.status


def shape(t: TrialRecord) -> str:
    p = t.params
    return f"d{p['DEPTH']} ar{p['ASPECT_RATIO']} b{p['DEVICE_BATCH_SIZE']}"


def summary_row(trials: list[TrialRecord]) -> dict:
    failed = [t for t in trials if t.failed]
    ok = [t for t in trials if not t.failed]
    predicted = sum(status(t) == "oom (pred)" for t in trials)
    total = sum(t.wall_seconds for t in trials)
    failed_s = sum(t.wall_seconds for t in failed)
    return {
        "trials": len(trials), "failed %": 100 * len(failed) / len(trials),
        "OOM pred %": 100 * predicted / len(trials),
        "OOM real %": 100 * (sum(t.status == "oom" for t in trials) - predicted) / len(trials),
        "failed s": failed_s, "trial s": total, "failed share %": 100 * failed_s / total,
        "failed mean s": statistics.mean(t.wall_seconds for t in failed) if failed else float("nan"),
        "ok mean s": statistics.mean(t.wall_seconds for t in ok) if ok else float("nan"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["random", "tpe"])
    parser.add_argument("--trials", type=int, default=6, help="study.max_trials")
    parser.add_argument("--budget", type=float, default=3.0, help="trial.time_budget_s (training seconds)")
    parser.add_argument("--limit-gb", type=float, default=3.0, help="trial.memory_limit_gb")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tpe-startup", type=int, default=4, help="tpe's method.options.n_startup_trials")
    parser.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        cache, warm = root / "xla_cache", root / "xla_cache_warm"
        run_study(root / "warmup", cache, "random", True, args, trials=1)
        shutil.copytree(cache, warm)
        results = {}
        for method in args.methods:
            for preflight in (False, True):
                name = f"{method}-preflight-{'on' if preflight else 'off'}"
                shutil.rmtree(cache)
                shutil.copytree(warm, cache)
                seconds = run_study(root / name, cache, method, preflight, args, args.trials)
                with Journal(root / name / JOURNAL_FILE, readonly=True) as journal:
                    results[method, preflight] = journal.trials(), seconds
                print(f"{name}: {seconds:.0f} s", flush=True)

    for method in args.methods:
        (off, _), (on, _) = results[method, False], results[method, True]
        print(f"\n{method}: trial by trial (wall seconds)\n")
        print(f"{'#':>3}  {'pre-flight off':<36}{'pre-flight on':<36}")
        for a, b in zip(off, on):
            cells = [f"{shape(t):<17}{status(t):<12}{t.wall_seconds:>5.1f}  " for t in (a, b)]
            print(f"{a.number:>3}  " + "".join(cells) + ("" if a.params == b.params else "(configurations differ)"))
        for preflight, trials in (("off", off), ("on", on)):
            for t in trials:
                if t.failed and t.status != "oom":
                    print(f"     pre-flight {preflight}, trial {t.number}: {t.status}: {t.error[:100]}")

    print(f"\n{args.trials} trials a study, {args.budget:g} s training, {args.limit_gb:g} GB limit, seed {args.seed}\n")
    columns = ["trials", "failed %", "OOM pred %", "OOM real %", "failed s", "trial s", "failed share %",
               "failed mean s", "ok mean s", "study s"]  # fmt: skip
    print(f"{'method':<8}{'pre-flight':<11}" + "".join(f"{c:>{len(c) + 2}}" for c in columns))
    for (method, preflight), (trials, seconds) in results.items():
        row = {**summary_row(trials), "study s": seconds}
        cells = [f"{row[c]:>{len(c) + 2}{'' if c == 'trials' else '.1f'}}" for c in columns]
        print(f"{method:<8}{'on' if preflight else 'off':<11}" + "".join(cells))


if __name__ == "__main__":
    main()
