"""The study loop: ask a proposer, run the trial in isolation, journal it, tell the proposer; resume on rerun.

Trial 0 is the space's default configuration. The loop stops after `study.max_trials` trials or once the summed
trial wall time reaches `study.budget_s` (the original study's rule). The journal in the run folder is the source
of truth: running the same study in the same folder again reads the finished trials back, rebuilds the proposer
by telling it those trials in order, and continues the numbering.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from rich.console import Console

from jaxhpo.config import StudyConfig
from jaxhpo.journal import Journal, TrialRecord
from jaxhpo.llm.server import llm_session
from jaxhpo.proposers import make_proposer
from jaxhpo.proposers.base import Proposal, Proposer
from jaxhpo.report import plot_convergence, summarize
from jaxhpo.space import Space
from jaxhpo.trial import check_space_keys, refused, run_trial, trial_config
from model.config import TrainConfig
from model.data import load_corpus

JOURNAL_FILE = "journal.sqlite"


class StudyError(ValueError):
    """A study that cannot start or resume; the message is one line."""


def validate_study(cfg: StudyConfig) -> None:
    """Refuse settings that make no sense, with one line naming the key."""
    checks = [
        (cfg.study.max_trials >= 1, "study.max_trials", cfg.study.max_trials, "must be at least 1"),
        (cfg.study.budget_s is None or cfg.study.budget_s > 0, "study.budget_s", cfg.study.budget_s,
         "must be > 0 seconds, or null for no budget"),
        (cfg.trial.time_budget_s > 0, "trial.time_budget_s", cfg.trial.time_budget_s, "must be > 0 seconds"),
        (cfg.trial.memory_limit_gb is None or cfg.trial.memory_limit_gb > 0, "trial.memory_limit_gb",
         cfg.trial.memory_limit_gb, "must be > 0, or null for no limit"),
        (cfg.trial.timeout_s is None or cfg.trial.timeout_s > 0, "trial.timeout_s", cfg.trial.timeout_s,
         "must be > 0 seconds, or null for automatic"),
    ]
    for ok, key, value, why in checks:
        if not ok:
            raise StudyError(f"invalid {key}={value!r}: {why}")


class Study:
    """A study bound to its run folder: `Study(cfg, run_dir).run()`."""

    def __init__(self, cfg: StudyConfig, run_dir: str | Path, console: Console | None = None):
        validate_study(cfg)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.console = console or Console(stderr=True)
        self.space = Space.from_config(cfg.space)
        self.base = TrainConfig(model=cfg.model, optim=cfg.optim, data=cfg.data, seed=cfg.seed)
        check_space_keys(self.space, self.base)
        self.method = cfg.method.name
        self.proposer: Proposer = make_proposer(self.method, self.space, cfg.seed, **cfg.method.options)
        self._warned_fallback = False

    def run(self) -> dict:
        """Run (or resume) to the end; returns the summary also written to summary.json."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with Journal(self.run_dir / JOURNAL_FILE) as journal, self._llm() as llm_startup_s:
            self._check_same_study(journal)
            history = journal.trials()
            for trial in history:
                self.proposer.tell(trial)
            if history:
                self.console.print(f"resuming: {len(history)} finished trials read from {journal.path}")
            # Tokenizer and token shards are built once here, not inside the first trial's time.
            load_corpus(self.cfg.data, self.cfg.model.vocab_size)
            while not self._done(history):
                record, llm_turn = self._run_one(journal.next_number(), history)
                journal.append(record, llm_turn=llm_turn)
                journal.export_csv(self.run_dir / "trials.csv")
                self.proposer.tell(record)
                history.append(record)
                self._show(record, history, llm_turn)
            turns = journal.llm_turns()
        summary = summarize(history, method=self.method, space_id=self.space.space_id, seed=self.cfg.seed,
                            budget_s=self.cfg.study.budget_s, llm_turns=turns, llm_startup_s=llm_startup_s)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if history:
            plot_convergence({self.method: [history]}, self.run_dir / "convergence.png")
        return summary

    @contextlib.contextmanager
    def _llm(self):
        """The LLM session for methods that ask one (the local server is started here and stopped on exit);
        yields its start-up seconds. LLM time is recorded, never charged to the trial budget."""
        if not self.proposer.uses_llm:
            yield 0.0
            return
        with contextlib.ExitStack() as stack:
            with self.console.status("starting the LLM…"):
                client = stack.enter_context(llm_session(self.cfg.llm, log_path=self.run_dir / "llm_server.log"))
            self.proposer.llm = client
            self.console.print(f"LLM {self.cfg.llm.model} ready in {client.startup_seconds:.1f}s")
            yield client.startup_seconds

    def _check_same_study(self, journal: Journal) -> None:
        info = {"method": self.method, "space_id": self.space.space_id, "seed": self.cfg.seed}
        stored = journal.study_info()
        clash = [k for k, v in info.items() if k in stored and stored[k] != v]
        if clash:
            k = clash[0]
            raise StudyError(
                f"{self.run_dir} holds a study with {k}={stored[k]!r}, not {info[k]!r}; "
                "resume it with the same settings or choose another hydra.run.dir"
            )
        if not stored:
            journal.set_study_info({**info, "space": self.space.definition(), "space_name": self.space.name})

    def _done(self, history: list[TrialRecord]) -> bool:
        budget = self.cfg.study.budget_s
        spent = sum(t.wall_seconds for t in history)
        return len(history) >= self.cfg.study.max_trials or (budget is not None and spent >= budget)

    def _run_one(self, number: int, history: list[TrialRecord]) -> tuple[TrialRecord, dict | None]:
        if number == 0:
            proposal = Proposal(self.space.default(), "default")
        else:
            proposal = self.proposer.ask(history)
        meta = dict(proposal.meta)
        llm_turn = meta.pop("llm_turn", None)
        try:
            train_cfg, repairs = trial_config(self.base, self.space, proposal.params, self.cfg.trial)
            if repairs:
                meta["repairs"] = repairs
            with self.console.status(f"trial {number} ({proposal.proposer}) training…"):
                outcome = run_trial(train_cfg, self.run_dir / "trials" / f"{number:04d}", self.cfg.trial.timeout_s)
        except ValueError as e:  # ConfigError, or a value the trainer's schema rejects: refused, never run
            outcome = refused(str(e).splitlines()[0], time.time())
        return TrialRecord(
            number=number, params=proposal.params, space_id=self.space.space_id, method=self.method,
            proposer=proposal.proposer, status=outcome.status, val_bpb=outcome.val_bpb, error=outcome.error,
            wall_seconds=outcome.wall_seconds, training_seconds=outcome.training_seconds,
            peak_memory_mb=outcome.peak_memory_mb, started_at=outcome.started_at, ended_at=outcome.ended_at,
            seed=self.cfg.seed, meta=meta, result=outcome.result,
        ), llm_turn

    def _show(self, record: TrialRecord, history: list[TrialRecord], llm_turn: dict | None) -> None:
        if llm_turn and llm_turn.get("fallback") and not self._warned_fallback:
            self._warned_fallback = True
            self.console.print(
                f"[yellow]warning:[/yellow] the LLM turn of trial {record.number} fell back to the classical "
                f"proposal ({llm_turn['fallback']}); later fallbacks are recorded in the journal without a warning",
                highlight=False,
            )
        ok = [t.val_bpb for t in history if not t.failed]
        best = f"{min(ok):.4f}" if ok else "-"
        value = f"{record.val_bpb:.4f}" if record.val_bpb is not None else "-"
        style = "green" if record.status == "ok" else "red"
        budget = self.cfg.study.budget_s
        left = f"{max(0.0, budget - sum(t.wall_seconds for t in history)):.0f}s" if budget else "∞"
        line = (
            f"trial {record.number:>3}  {record.proposer:<14} [{style}]{record.status:<8}[/{style}] "
            f"val_bpb {value:>7}  best {best:>7}  {record.wall_seconds:5.0f}s  budget left {left}"
        )
        if llm_turn and llm_turn.get("latency_s") is not None:
            line += f"  [dim]LLM {llm_turn['latency_s']:.1f}s[/dim]"
        if record.error:
            line += f"  [dim]{record.error[:80]}[/dim]"
        self.console.print(line, highlight=False)
