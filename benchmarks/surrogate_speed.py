"""What a surrogate study costs: a 100-trial TPE study on trainer=surrogate end to end (the target: under a minute
on 2 cores), and what one surrogate trial costs the study besides its proposer (the target: under 50 ms), measured
as the difference between random-search studies of 101 and 1 trials, side by side in one run (random search
without its failure model, `avoid_failures=false`, whose fit and predictions are the proposer's cost: its ask
takes about 0.1 ms). The first study
fits the surrogate and caches the fit (surrogate.cache_dir, a fresh folder here); the others load it, as the
studies of a grid do: the two one-trial studies show what the fit costs.

    python benchmarks/surrogate_speed.py [--trials 100]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def study_seconds(method: str, trials: int, folder: Path, cache: Path, *overrides: str) -> float:
    """Wall seconds of `python -m jaxhpo +method=METHOD trainer=surrogate` with `trials` trials, start to exit."""
    args = [sys.executable, "-m", "jaxhpo", f"+method={method}", "trainer=surrogate", f"study.max_trials={trials}",
            "study.budget_s=null", f"hydra.run.dir={folder}", f"surrogate.cache_dir={cache}", *overrides]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = "method.options.avoid_failures=false"
        cold = study_seconds("random", 1, tmp / "cold", tmp / "cache", plain)
        one = study_seconds("random", 1, tmp / "one", tmp / "cache", plain)
        tpe = study_seconds("tpe", args.trials, tmp / "tpe", tmp / "cache")
        many = study_seconds("random", args.trials + 1, tmp / "many", tmp / "cache", plain)
    per_trial_ms = (many - one) / args.trials * 1000
    print(f"tpe, {args.trials} trials on the surrogate: {tpe:.1f} s end to end (target < 60 s)")
    print(f"random, 1 trial: {cold:.1f} s fitting the surrogate, {one:.1f} s with the fit cached (start-up: imports, "
          f"loading the table); {args.trials + 1} trials: {many:.1f} s")  # fmt: skip
    print(f"one surrogate trial costs the study {per_trial_ms:.1f} ms besides its proposer (target < 50 ms)")


if __name__ == "__main__":
    main()
