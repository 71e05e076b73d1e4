"""What pruning saves and what it costs in the best found: studies with `study.pruner=none` against the same
methods and seeds with a pruner, from their journals.

    python -m jaxhpo -m seed=0,1 +method=random,tpe,cmaes study.pruner=none,asha study.max_trials=20 \\
        study.budget_s=null hydra/launcher=joblib hydra.launcher.n_jobs=2 \\
        trial.compile_cache_dir=outputs/compare-pruning/xla_cache hydra.sweep.dir=outputs/compare-pruning \\
        'hydra.sweep.subdir=${study.pruner}/${method.name}/seed${seed}'
    python benchmarks/pruning_savings.py outputs/compare-pruning [--pruner asha]

The same on the surrogate benchmark (its learning curves: README, "A surrogate benchmark from real trials"), ten
seeds of 100 trials, in about 17 minutes:

    python -m jaxhpo -m trainer=surrogate +method=random,tpe,cmaes study.pruner=none,asha,median 'seed=range(10)' \\
        study.max_trials=100 study.budget_s=null hydra.sweep.dir=outputs/compare-pruning-surrogate \\
        'hydra.sweep.subdir=${study.pruner}/${method.name}/seed${seed}'
    python benchmarks/pruning_savings.py outputs/compare-pruning-surrogate --pruner asha   # and --pruner median

For each method and seed, both studies ran the same number of trials: the table gives each one's summed trial
wall time (what a budget is charged), its best val_bpb, the pruned share of its trials, and the best the study
without pruning had found once it had spent what the pruned study spent in all (the fair comparison at equal
budget). Below it, pooled over every (method, seed) pair and then for each method: the spend ratio's mean with a
bootstrap 95 % interval, and paired Wilcoxon signed-rank tests of the bests, at equal trials and at equal spend
(jaxhpo.stats).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from jaxhpo.journal import Journal, TrialRecord
from jaxhpo.stats import bootstrap_ci, paired_wilcoxon


def trials(path: Path) -> list[TrialRecord]:
    with Journal(path / "journal.sqlite", readonly=True) as journal:
        return sorted(journal.trials(), key=lambda t: t.number)


def best(ts: list[TrialRecord]) -> float | None:
    ok = [t.val_bpb for t in ts if t.status == "ok"]
    return min(ok) if ok else None


def best_within(ts: list[TrialRecord], spend: float) -> float | None:
    """The best val_bpb of the trials that finished before `spend` seconds of summed wall time were spent."""
    spent, kept = 0.0, []
    for t in ts:
        spent += t.wall_seconds
        if spent > spend:
            break
        kept.append(t)
    return best(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the grid's folder: ROOT/<pruner>/<method>/seed<k>/journal.sqlite")
    parser.add_argument("--pruner", default="asha")
    args = parser.parse_args()

    rows = []
    for pruned_dir in sorted((args.root / args.pruner).glob("*/seed*")):
        plain_dir = args.root / "none" / pruned_dir.relative_to(args.root / args.pruner)
        if not (pruned_dir / "journal.sqlite").exists() or not (plain_dir / "journal.sqlite").exists():
            continue
        a, b = trials(plain_dir), trials(pruned_dir)
        if len(a) != len(b):
            print(f"skipped {pruned_dir.relative_to(args.root)}: {len(a)} trials without pruning, {len(b)} with "
                  "(a study still running?)")  # fmt: skip
            continue
        spend_a, spend_b = sum(t.wall_seconds for t in a), sum(t.wall_seconds for t in b)
        rows.append({"study": f"{pruned_dir.parent.name}/{pruned_dir.name}", "trials": len(a), "spend_none": spend_a,
                     "spend_pruned": spend_b, "best_none": best(a), "best_pruned": best(b),
                     "best_none_at_spend": best_within(a, spend_b),
                     "pruned_pct": 100 * sum(t.status == "pruned" for t in b) / len(b)})  # fmt: skip
    if not rows:
        raise SystemExit(f"no finished pairs of studies under {args.root}/none and {args.root}/{args.pruner}")

    print(f"{'study':<16}{'trials':>7}{'spent none s':>14}{f'{args.pruner} s':>10}{'ratio':>7}{'pruned %':>10}"
          f"{'best none':>11}{f'best {args.pruner}':>12}{'none at equal spend':>21}")  # fmt: skip
    for r in rows:
        at_spend = f"{r['best_none_at_spend']:.4f}" if r["best_none_at_spend"] is not None else "-"
        print(f"{r['study']:<16}{r['trials']:>7}{r['spend_none']:>14.0f}{r['spend_pruned']:>10.0f}"
              f"{r['spend_pruned'] / r['spend_none']:>7.2f}{r['pruned_pct']:>10.1f}{r['best_none']:>11.4f}"
              f"{r['best_pruned']:>12.4f}{at_spend:>21}")  # fmt: skip

    summarize(rows, args.pruner, "all methods")
    for method in sorted({r["study"].split("/")[0] for r in rows}):
        summarize([r for r in rows if r["study"].startswith(f"{method}/")], args.pruner, method)


def summarize(rows: list[dict], pruner: str, label: str) -> None:
    """The spend ratio with its bootstrap interval, and paired tests of the bests at equal trials and equal spend."""
    ratios = [r["spend_pruned"] / r["spend_none"] for r in rows]
    ci = bootstrap_ci(ratios)
    print(f"\n{label}: spend with {pruner} / without, {len(rows)} pairs: mean {statistics.mean(ratios):.2f} "
          f"(bootstrap 95 % CI {ci[0]:.2f}-{ci[1]:.2f})")  # fmt: skip
    for what, key in (("equal trials", "best_none"), ("equal spend", "best_none_at_spend")):
        pairs = [(r[key], r["best_pruned"]) for r in rows if r[key] is not None]
        diffs = [p - n for n, p in pairs]
        test = paired_wilcoxon(dict(enumerate(n for n, _ in pairs)), dict(enumerate(p for _, p in pairs)))
        p = f"{test.p_value:.3f}" if test.p_value is not None else "untestable"
        print(f"  best val_bpb, {what}: {pruner} - none = {statistics.mean(diffs):+.4f} on average "
              f"({sum(d < 0 for d in diffs)} of {len(diffs)} pairs better with {pruner}); Wilcoxon p = {p}")


if __name__ == "__main__":
    main()
