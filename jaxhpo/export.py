"""Export a study's journal to the tools HPO users already have.

`python -m jaxhpo.export optuna RUN_DIR --storage sqlite:///study.db [--name NAME]` writes every finished trial
into an Optuna storage: its parameters with the space's distributions, val_bpb as the value (minimized), the state
(COMPLETE for ok, FAIL otherwise) and as user attributes the proposer, the status and error, the space id, the
wall and training seconds, and a hybrid trial's structure id and kind of change. `optuna-dashboard sqlite:///study.db`
and `optuna.visualization` then work on it. The journal is only read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from jaxhpo.journal import JOURNAL_FILE, Journal, JournalError, TrialRecord
from jaxhpo.space import Space, SpaceError


class ExportError(ValueError):
    """A study that cannot be exported; the message is one line."""


def _distributions(space: Space) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for p in space.params:
        if p.type == "categorical":
            out[p.name] = CategoricalDistribution(list(p.choices))
        elif p.type == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log or p.pow2)
        else:
            out[p.name] = FloatDistribution(float(p.low), float(p.high), log=p.log)
    return out


def _attrs(t: TrialRecord) -> dict:
    attrs = {"number": t.number, "proposer": t.proposer, "status": t.status, "space_id": t.space_id,
             "wall_seconds": t.wall_seconds, "training_seconds": t.training_seconds}  # fmt: skip
    if t.error:
        attrs["error"] = t.error
    hybrid = (t.meta or {}).get("hybrid")
    if hybrid:
        attrs.update(structure_id=hybrid["structure_id"], change=hybrid["change"], phase=hybrid["phase"])
    return attrs


def to_optuna(run_dir: str | Path, storage: str, name: str | None = None):
    """Write the study in `run_dir` into the Optuna `storage` as a new study (`name`, default "METHOD-seedN");
    returns the Optuna study. ExportError (one line) for a folder without a journal or a name already taken."""
    import optuna

    path = Path(run_dir) / JOURNAL_FILE
    if not path.is_file():
        raise ExportError(f"{run_dir} holds no {JOURNAL_FILE}: give the folder of a jaxhpo study")
    try:
        with Journal(path, readonly=True) as journal:
            info, trials = journal.study_info(), journal.trials()
        space = Space(info.get("space_name") or "space", info["space"])
    except (JournalError, KeyError, SpaceError) as e:
        raise ExportError(f"cannot read the study in {run_dir}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    name = name or f"{info.get('method', 'study')}-seed{info.get('seed', 0)}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        raise ExportError(f"{storage} already holds a study named {name!r}; pass --name") from None
    study.set_user_attr("jaxhpo", {k: info.get(k) for k in ("method", "seed", "space_id", "space_name")})
    dists, by_name = _distributions(space), {p.name: p for p in space.params}
    for t in trials:
        # a value outside the space (a journal from before a space change) is left out rather than refused
        params = {n: v for n, v in t.params.items() if n in by_name and by_name[n].contains(v)}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: dists[n] for n in params},
            value=None if t.failed else t.val_bpb,
            state=optuna.trial.TrialState.FAIL if t.failed else optuna.trial.TrialState.COMPLETE,
            user_attrs=_attrs(t),
        ))  # fmt: skip
    return study


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxhpo.export optuna RUN_DIR --storage URL [--name NAME]`; 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m jaxhpo.export", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["optuna"], help="what to export to")
    parser.add_argument("run_dir", help="a study's folder (holds journal.sqlite)")
    parser.add_argument("--storage", required=True, help="an Optuna storage URL, e.g. sqlite:///study.db")
    parser.add_argument("--name", help="the Optuna study's name (default: METHOD-seedN)")
    args = parser.parse_args(argv)
    try:
        study = to_optuna(args.run_dir, args.storage, args.name)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = sum(t.state.name == "COMPLETE" for t in study.trials)
    print(f"exported {len(study.trials)} trials ({done} complete) to {args.storage} as study {study.study_name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
