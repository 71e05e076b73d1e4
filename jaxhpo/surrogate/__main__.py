"""`python -m jaxhpo.surrogate fit [--table PATH | --journals J ...]`: how well each candidate model predicts
held-out trials of the data, the measured seed-to-seed noise, and which models the best fits are.
`python -m jaxhpo.surrogate curves [--table PATH | --journals J ...]`: the same for the learning curves a pruned
surrogate study reports at its rungs."""

from __future__ import annotations

import argparse
import sys
import warnings

from jaxhpo.surrogate.curves import cross_validate_curves
from jaxhpo.surrogate.data import SurrogateError, load_journals, load_table
from jaxhpo.surrogate.model import cross_validate

DEFAULT_TABLE = "benchmarks/data/surrogate_tiny.csv"
DEFAULT_CURVES = "benchmarks/data/surrogate_tiny_curves.csv"


def report(scores: dict) -> str:
    """The fit as text: a line per candidate, then the choice."""
    lines = [f"{scores['trials']} trials ({', '.join(f'{n} {s}' for s, n in scores['statuses'].items())}); "
             "5-fold held-out fit", "", f"{'regressor':<14} {'R² val_bpb':>10} {'Spearman ρ':>10} {'R² log cost':>11}"]
    for name, s in scores["regressors"].items():
        lines.append(f"{name:<14} {s['r2']:>10.3f} {s['spearman']:>10.3f} {s['cost_r2']:>11.3f}")
    lines += ["", f"{'classifier':<14} {'accuracy':>10} {'OOM boundary':>12} {'OOMs found':>10}"]
    for name, s in scores["classifiers"].items():
        found = "–" if s["oom_recall"] is None else f"{s['oom_recall']:.3f}"
        lines.append(f"{name:<14} {s['accuracy']:>10.3f} {s['oom_accuracy']:>12.3f} {found:>10}")
    lines.append(f"{'(commonest)':<14} {scores['majority_accuracy']:>10.3f}")
    # Ranked by Spearman ρ: optimizers are compared by which configurations they find, so what a surrogate must
    # get right is the order of configurations more than the scale of val_bpb.
    best_r = max(scores["regressors"], key=lambda n: scores["regressors"][n]["spearman"])
    best_c = max(scores["classifiers"], key=lambda n: scores["classifiers"][n]["accuracy"])
    noise = (f"{scores['noise_std']:.4f} val_bpb (pooled over {scores['noise_groups']} configurations run with several "
             "seeds)" if scores["noise_groups"] else "0 (the data repeats no configuration under several seeds)")
    lines += ["", f"seed-to-seed noise: {noise}", f"best: surrogate.regressor={best_r} surrogate.classifier={best_c}"]
    return "\n".join(lines)


def curves_report(rows: list[dict]) -> str:
    """The curves' fit as text: a line per measured fraction."""
    lines = ["held-out learning curves (5-fold, whole trials held out): the error of the fitted line, and Spearman",
             "rho between final val_bpb and the rung value, of the real trials and of the surrogate's draws", "",
             f"{'fraction':>8} {'trials':>6} {'MAE bpb':>8} {'ρ real':>7} {'ρ drawn':>8}"]  # fmt: skip
    for r in rows:
        lines.append(f"{r['fraction']:>8.4f} {r['trials']:>6} {r['mae']:>8.4f} {r['spearman_real']:>7.3f} "
                     f"{r['spearman_drawn']:>8.3f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxhpo.surrogate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="score the candidate models on held-out trials")
    fit.add_argument("--table", default=DEFAULT_TABLE, help=f"a table and its .json sidecar (default {DEFAULT_TABLE})")
    fit.add_argument("--journals", nargs="+", help="study journals to fit on instead of the table")
    curves = sub.add_parser("curves", help="score the learning curves on held-out trials")
    curves.add_argument("--table", default=DEFAULT_CURVES, help=f"a table with a rungs column (default "
                                                                f"{DEFAULT_CURVES})")  # fmt: skip
    curves.add_argument("--journals", nargs="+", help="study journals with rung reports, instead of the table")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="sklearn")  # a GP's bound warnings: its scores say how well it fits
    try:
        obs = load_journals(args.journals) if args.journals else load_table(args.table)
        print(report(cross_validate(obs)) if args.command == "fit" else curves_report(cross_validate_curves(obs)))
    except SurrogateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
