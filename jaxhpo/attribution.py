"""Where a structure-and-numbers study's wins came from (method=hybrid's trials, by their `meta.hybrid`).

- `structure_tree`: every structure tried, with its parent, what it changed, its trials and its best val_bpb.
- `improvement_shares`: the study's total improvement (from its first success to its best) split by the kind of
  change of the trials that improved the best-so-far: structural (a new structure's first trial), numeric (the
  numbers tuned inside a structure) or noise (a rerun of the default under another training seed).
- `variance_decomposition`: the share of the variance of the successful trials' val_bpb that lies between
  structures (their means) rather than within them (the numbers): an ANOVA's η².

Trials without that meta (the default configuration; another method's) belong to the structure their parameters
build, and count as numeric changes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxhpo import structure
from jaxhpo.journal import TrialRecord

KINDS = ("structural", "numeric", "noise")


def _hybrid(t: TrialRecord) -> dict | None:
    return (t.meta or {}).get("hybrid")


def has_structures(trials: Sequence[TrialRecord]) -> bool:
    """Whether a study's trials carry structures (method=hybrid)."""
    return any(_hybrid(t) for t in trials)


def structure_of(t: TrialRecord) -> str | None:
    """A trial's structure id; None for a trial whose parameters are not on the menu."""
    return structure.id_of(t.params, _hybrid(t))


def change_of(t: TrialRecord) -> str:
    """The kind of change a trial made (KINDS)."""
    meta = _hybrid(t)
    if meta is None:
        return "numeric"
    return "noise" if meta.get("phase") == "noise" else meta.get("change", "numeric")


def structure_tree(trials: Sequence[TrialRecord]) -> list[dict]:
    """One row per structure, in the order first tried: id, parent, depth, the options it changed from its parent,
    trials, failures and best val_bpb."""
    rows: dict[str, dict] = {}
    for t in trials:
        sid = structure_of(t)
        if sid is None:
            continue
        if sid not in rows:
            meta = _hybrid(t)
            parent = meta.get("parent") if meta else None
            choices = meta["structure"] if meta else structure.of_params(t.params)
            parent_choices = next((r["choices"] for r in rows.values() if r["structure_id"] == parent), None)
            rows[sid] = {
                "structure_id": sid, "parent": parent, "choices": choices,
                "depth": rows[parent]["depth"] + 1 if parent in rows else 0,
                "changes": structure.changes(parent_choices or structure.DEFAULT, choices),
                "first_trial": t.number, "trials": 0, "failures": 0, "best_val_bpb": None,
            }  # fmt: skip
        row = rows[sid]
        row["trials"] += 1
        row["failures"] += t.failed
        if not t.failed and (row["best_val_bpb"] is None or t.val_bpb < row["best_val_bpb"]):
            row["best_val_bpb"] = t.val_bpb
    return list(rows.values())


def improvement_shares(trials: Sequence[TrialRecord]) -> dict:
    """{"total": the best-so-far's fall from the first success to the best, KIND: the share of it made by trials of
    that kind} in trial order; shares are None when nothing improved."""
    best, gains = None, dict.fromkeys(KINDS, 0.0)
    for t in trials:
        if t.failed:
            continue
        if best is not None and t.val_bpb < best:
            gains[change_of(t)] += best - t.val_bpb
        if best is None or t.val_bpb < best:
            best = t.val_bpb
    total = sum(gains.values())
    return {"total": total, **{k: (v / total if total > 0 else None) for k, v in gains.items()}}


def variance_decomposition(trials: Sequence[TrialRecord]) -> dict:
    """{"between": the share of the successes' val_bpb variance between structure means, "within": the rest,
    "structures": how many structures had a success, "trials": successes}; shares None for fewer than two
    successes or no variance."""
    groups: dict[str, list[float]] = {}
    for t in trials:
        if not t.failed and (sid := structure_of(t)) is not None:
            groups.setdefault(sid, []).append(t.val_bpb)
    values = np.array([v for g in groups.values() for v in g])
    total = float(((values - values.mean()) ** 2).sum()) if len(values) > 1 else 0.0
    if total <= 0:
        return {"between": None, "within": None, "structures": len(groups), "trials": len(values)}
    between = sum(len(g) * (np.mean(g) - values.mean()) ** 2 for g in groups.values()) / total
    return {"between": float(between), "within": float(1 - between), "structures": len(groups), "trials": len(values)}


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def tree_markdown(rows: Sequence[dict], sign: float = 1.0) -> str:
    """The structure tree as a table, each structure indented under its parent (`sign` -1: a maximized metric,
    whose own values are shown)."""
    by_parent: dict[str | None, list[dict]] = {}
    for r in rows:
        by_parent.setdefault(r["parent"] if r["parent"] in {x["structure_id"] for x in rows} else None, []).append(r)
    lines = ["| structure | changes from its parent | trials | failed | best val_bpb |", "|---|---|---|---|---|"]

    def walk(parent: str | None, depth: int) -> None:
        for r in by_parent.get(parent, []):
            changes = structure.describe(r["changes"]) or "(the default)"
            best = None if r["best_val_bpb"] is None else sign * r["best_val_bpb"]
            lines.append(f"| {'&nbsp;&nbsp;' * depth}{r['structure_id']} | {changes} | {r['trials']} | "
                         f"{r['failures']} | {_fmt(best, '.4f')} |")  # fmt: skip
            walk(r["structure_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def study_markdown(name: str, trials: Sequence[TrialRecord], sign: float = 1.0) -> str:
    """A study's tree, improvement shares and variance decomposition (trials as proposers see them: a maximized
    metric negated, `sign` -1)."""
    shares, var = improvement_shares(trials), variance_decomposition(trials)
    pct = lambda v: _fmt(None if v is None else 100 * v, ".0f") + " %"  # noqa: E731
    return "\n\n".join([
        f"### {name}",
        tree_markdown(structure_tree(trials), sign),
        f"Improvement of the best val_bpb from the first success: {shares['total']:.4f}, of which structural changes "
        f"made {pct(shares['structural'])}, numeric tuning {pct(shares['numeric'])} and reruns of the default "
        f"{pct(shares['noise'])}.",
        f"Variance of the {var['trials']} successful trials' val_bpb: {pct(var['between'])} between the "
        f"{var['structures']} structures' means, {pct(var['within'])} within structures.",
    ])  # fmt: skip


NOTES = ("The tree lists every structure a study tried under the one it was derived from, with the options it "
         "changed. The improvement shares split the fall of the best-so-far val_bpb, from the first successful "
         "trial to the best, by the kind of change of each trial that improved it: a structure's first trial is "
         "structural, the numbers tuned inside a structure numeric. The variance decomposition is η²: the share of "
         "the successful trials' val_bpb variance explained by which structure they ran (between structures) "
         "against their numbers (within); it describes where this study searched, not the structures' worth "
         "everywhere.")  # fmt: skip
