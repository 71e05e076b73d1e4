"""The study loop: ask a proposer, run the trial in isolation, journal it, tell the proposer; resume on rerun.

Trial 0 is the space's default configuration. No trial starts once `study.max_trials` trials have started or the
budget spent by the finished ones reaches `study.budget_s` (each trial's wall time; under
`protocol.budget_charge=training`, the study's rule, an ok trial's training seconds), nor once the last
`study.max_consecutive_refusals` trials were refused for the same reason, or lost to their LLM call (protocol=paper;
neither costs time, so no budget would end them): the study then stops with that reason. A proposal whose meta
holds `not_run` (protocol=paper: its LLM call failed) is journaled as crashed in 0 s without running, and told to
the proposer. Settings that would fail every trial are refused before the first one (`Study.__init__`). With
`study.workers=N`, N trials run at once (`jaxhpo.workers`); the proposer is asked whenever a worker is free, with
the configurations still running, and told each trial as it finishes. Only this process writes the journal.

The journal in the run folder is the source of truth: a trial is recorded as pending before it starts and as
finished when it ends. Running the same study in the same folder again reads the finished trials back, rebuilds
the proposer by telling it those trials in order, runs the trials that were still pending (interrupted) again
under their numbers and configurations, and continues the numbering. With one worker a resumed study proposes
exactly what the uninterrupted one would have; with several, trials finish in an order timing decides, so the
order they are told in -- and the proposals after it -- can differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import time
import warnings
from pathlib import Path
from typing import Mapping

from omegaconf import OmegaConf
from rich.console import Console

from jaxhpo import objective, script, source
from jaxhpo.config import StudyConfig, check_study_settings
from jaxhpo.footprints import FILE as FOOTPRINTS
from jaxhpo.footprints import FootprintCache, oom_message
from jaxhpo.journal import JOURNAL_FILE, Journal, PendingTrial, TrialRecord
from jaxhpo.live import LiveStatus
from jaxhpo.mlflow_logger import make_logger
from jaxhpo.llm.client import LLMError
from jaxhpo.llm.server import llm_session
from jaxhpo.proposers import make_proposer, options_added, proposer_options, resolved_options, study_space
from jaxhpo.proposers.base import Proposal, Proposer
from jaxhpo.protocol import NOT_RUN_PREFIX, ProtocolConfig, charged_seconds
from jaxhpo.pruners import Pruner
from jaxhpo.report import plot_convergence, summarize
from jaxhpo.space import Space
from jaxhpo.surrogate.curves import LearningCurves
from jaxhpo.surrogate.data import SurrogateError, check_covers, load_journals, load_table
from jaxhpo.surrogate.model import Surrogate, fitted
from jaxhpo.trial import (
    Outcome,
    study_has_gpu,
    check_space_keys,
    check_space_values,
    refused,
    resolve_budget,
    trial_config,
)
from jaxhpo.workers import WorkerPool
from model import device
from model.config import KEYS_ADDED, ConfigError, TrainConfig, check_fields
from model.data import load_corpus


class StudyError(ValueError):
    """A study that cannot start or resume; the message is one line."""


class Study:
    """A study bound to its run folder: `Study(cfg, run_dir).run()`."""

    def __init__(self, cfg: StudyConfig, run_dir: str | Path, console: Console | None = None):
        try:
            check_study_settings(cfg)
        except (ConfigError, LLMError) as e:
            raise StudyError(str(e)) from None
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.trial = dataclasses.replace(
            cfg.trial, compile_cache_dir=cfg.trial.compile_cache_dir or str(self.run_dir.resolve() / "xla_cache")
        )
        self.console = console or Console(stderr=True, soft_wrap=True)  # one line per trial, also in logs
        self.file_space = Space.from_config(cfg.space, cfg.protocol.pow2_prior)
        self.space = self._study_space(self.file_space)
        self.base = TrainConfig(model=cfg.model, optim=cfg.optim, data=cfg.data, seed=cfg.seed)
        self.script = self._script() if cfg.trainer.name in ("script", "python") else None
        if self.script is None:
            self._check_base()
        st = cfg.study
        self.pruner = Pruner(st.pruner, st.pruner_rungs, st.pruner_min_trials, st.pruner_eta)
        self.surrogate = self._surrogate() if cfg.trainer.name == "surrogate" else None
        self.metric = cfg.study.metric
        self.objective = objective.for_trainer(self.metric, cfg.study.direction, cfg.trainer.name,
                                               cfg.trainer.path or cfg.trainer.target)  # fmt: skip
        # Proposers minimize: a metric to maximize reaches them (and the study's history) negated; the journal, the
        # logs and summary.json keep its own values.
        self.sign = self.objective.sign
        if self.metric != "val_bpb" and cfg.trainer.name == "surrogate":
            raise StudyError(f"study.metric={self.metric}: trainer=surrogate predicts val_bpb only")
        self.method = cfg.method.name
        if self.trial.compile_cache:
            # A proposer's own JAX programs (evosax's CMA-ES compiles for seconds as it is made) load from the
            # persistent cache the trials share, so a resume or a grid's next study does not compile them again.
            device.enable_compile_cache(self.trial.compile_cache_dir)
        try:
            self.proposer: Proposer = make_proposer(self.method, self.space, cfg.seed, protocol=cfg.protocol,
                                                    **cfg.method.options)  # fmt: skip
        except ValueError as e:
            raise StudyError(str(e)) from None
        self.proposer.objective = self.objective
        paper = {"llm": "agent", "centaur": "centaur"}.get(self.method)  # the protocol key of its prompts
        if paper and getattr(cfg.protocol, paper) == "paper" and self.metric != "val_bpb":
            raise StudyError(f"protocol.{paper}=paper sends the study's own prompts, which score val_bpb: for "
                             f"study.metric={self.metric} use protocol.{paper}=jaxhpo")  # fmt: skip
        if self.proposer.edits_source and cfg.trainer.name != "gpt":
            raise StudyError(f"method {self.method} edits the built-in trainer's source, and trainer="
                             f"{cfg.trainer.name} has none: use trainer=gpt")  # fmt: skip
        # A surrogate or a script has no pre-flight; an edited trainer's footprint is not its configuration's.
        footprints = (self.trial.footprint_cache and cfg.trainer.name == "gpt" and not self.proposer.edits_source)
        self.footprints = FootprintCache(Path(self.trial.compile_cache_dir) / FOOTPRINTS if footprints else None,
                                         warn=lambda line: self.console.print(line, highlight=False))  # fmt: skip
        if self.proposer.failure_model is not None and self.footprints.path is not None:
            self.proposer.failure_model.known_to_fail = self._known_to_fail
        self._warned_fallback = False
        try:
            self.logger = make_logger(cfg.logger, self.run_dir, lambda line: self.console.print(line, highlight=False),
                                      cfg.study.metric)  # fmt: skip
        except ValueError as e:
            raise StudyError(str(e)) from None

    def _study_space(self, space: Space) -> Space:
        """The space file's space, or the larger one the method searches (hybrid: with the model's structure)."""
        try:
            params = study_space(self.cfg.method.name, space.definition(), self.cfg.protocol)
            return space if params == space.definition() else Space(space.name, params, self.cfg.protocol.pow2_prior)
        except ValueError as e:  # an unknown method; a space the method cannot extend
            raise StudyError(str(e)) from None

    def _known_to_fail(self, params: Mapping) -> bool:
        """Whether the pre-flight cache knows `params`'s shapes do not fit (what the proposers' failure model
        reads): a configuration the trainer would refuse is not for this to say."""
        if self.footprints.empty():  # the usual case, and building the trainer's config takes milliseconds
            return False
        cfg = self._train_config(params)
        return cfg is not None and self.footprints.predicted_oom(cfg) is not None

    def _train_config(self, params: Mapping) -> TrainConfig | None:
        """The trainer's config for `params` (repaired), None for one the trainer refuses (or a script's)."""
        if self.script is not None:
            return None
        try:
            return trial_config(self.base, self.space, params, self.trial)[0]
        except ValueError:
            return None

    def _check_base(self) -> None:
        """Refuse a space or base configuration that would fail trial after trial, before the proposer is built
        (CMA-ES takes seconds) and before anything is written: a space value its trainer key does not accept, a
        base value outside its field's range (even one the space overrides: the journal records it), and a
        default configuration the trainer refuses."""
        check_space_keys(self.space, self.base)
        check_space_values(self.space, self.base)
        try:
            check_fields(self.base)
            trial_config(self.base, self.space, self.space.default(), self.trial)
        except ValueError as e:  # ConfigError, or OmegaConf's type error
            raise StudyError(str(e).splitlines()[0]) from None

    def _surrogate(self) -> Surrogate:
        """The fitted surrogate, once the study is checked to ask only what its data covers."""
        s = self.cfg.surrogate
        try:
            obs = load_journals(s.journals) if s.journals else load_table(s.table)
            check_covers(obs, self.space, self.base, self._trainer_flat())
            with self.console.status(f"fitting the surrogate on {obs.source}…"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a GP's bound warnings; `jaxhpo.surrogate fit` scores the fit
                surrogate = fitted(obs, s.regressor, s.classifier, s.noise_std, s.cache_dir)
            if self.pruner.active:
                surrogate.curves = self._curves(s.curves)
            return surrogate
        except SurrogateError as e:
            raise StudyError(str(e)) from None

    def _curves(self, path: str) -> LearningCurves:
        """The learning curves a pruned surrogate study reports at its rungs, checked like the surrogate's data."""
        obs = load_journals([path]) if Path(path).suffix == ".sqlite" else load_table(path)
        check_covers(obs, self.space, self.base, self._trainer_flat())
        curves = LearningCurves(obs)
        curves.check_rungs(self.pruner.rungs)
        return curves

    def _script(self) -> script.ScriptJob:
        """trainer=script|python: the script read once (or the target checked), the space checked against it: the
        study's job, without values yet."""
        t = self.cfg.trainer
        try:
            if self.trial.executor != "local":
                raise script.ScriptError(f"trainer={t.name} runs its trials locally: set trial.executor=local")
            budget = {"unit": resolve_budget(self.trial), "time_s": self.trial.time_budget_s,
                      "flops": self.trial.budget_flops, "tokens": self.trial.budget_tokens,
                      "steps": self.trial.budget_steps}  # fmt: skip
            return script.study_job(t, self.space, self.trial, budget, no_gpu=not study_has_gpu(),
                                    metric=self.cfg.study.metric)  # fmt: skip
        except script.ScriptError as e:
            raise StudyError(str(e)) from None

    def _job(self, params: Mapping) -> tuple[TrainConfig | script.ScriptJob, list[str]]:
        """What a trial of `params` runs, and a note per repair; ValueError (one line) for a refused one."""
        if self.script is not None:
            return self.script.with_values(self.space, params), []
        return trial_config(self.base, self.space, params, self.trial)

    def _pool(self) -> WorkerPool:
        if self.script is not None:
            return WorkerPool(self.cfg.study.workers, self.trial, self.run_dir, run=script.run)
        if self.surrogate is None:
            return WorkerPool(self.cfg.study.workers, self.trial, self.run_dir)
        # A surrogate trial is a prediction in this process, wherever real trials would run.
        local = dataclasses.replace(self.trial, executor="local")
        return WorkerPool(self.cfg.study.workers, local, self.run_dir, run=self.surrogate.run)

    def run(self) -> dict:
        """Run (or resume) to the end; returns the summary also written to summary.json."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_trials_are_journaled()
        self.proposer.workdir = self.run_dir / f"{self.method}_output"  # where a library's own files go (SMAC's)
        with (
            self._pool() as pool,
            Journal(self.run_dir / JOURNAL_FILE) as journal,
            self._llm() as llm_startup_s,
        ):
            self._check_same_study(journal)
            history = [self._oriented(t) for t in journal.trials()]
            for trial in history:
                self.proposer.tell(trial)
                self.pruner.tell(trial)
            if self.logger is not None:  # the study's run, and the finished trials a crash kept from it
                self.logger.start({"method": self.method, "seed": self.cfg.seed, "space_id": self.space.space_id,
                                   **{k: v for k, v in self.trainer_settings().items() if v is not None}})  # fmt: skip
                for trial in history:
                    self.logger.trial(self._oriented(trial), self._trial_dir(trial.number))
            interrupted = journal.pending()
            if history or interrupted:
                self.console.print(
                    f"resuming: {len(history)} finished trials read from {journal.path}"
                    + (f"; running the {len(interrupted)} interrupted again" if interrupted else "")
                )
            if self.cfg.trainer.name == "gpt":  # tokenizer and token shards built once here, not in a trial's time
                load_corpus(self.cfg.data, self.cfg.model.vocab_size)
            try:
                self._loop(pool, journal, history, interrupted)
                stopped = None
            except StudyError as e:  # stopped by refusals: what ran is still summarized
                stopped = e
            turns = journal.llm_turns()
        summary = summarize([self._oriented(t) for t in history], method=self.method, space_id=self.space.space_id,
                            seed=self.cfg.seed, budget_s=self.cfg.study.budget_s, llm_turns=turns,
                            llm_startup_s=llm_startup_s, budget_charge=self.cfg.protocol.budget_charge,
                            metric=self.metric, direction=self.cfg.study.direction)  # fmt: skip
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.logger is not None:
            self.logger.finish(summary)
        if history:
            plot_convergence({self.method: [history]}, self.run_dir / "convergence.png", self.sign, self.metric)
        if stopped is not None:
            raise stopped
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
            # One cheap request now, not a surprise after the warm-up trials: a missing key stops the study here
            # (LLMError); an endpoint that does not answer is a warning, its turns fall back to classical proposals.
            if trouble := client.check():
                self.console.print(
                    f"[yellow]warning:[/yellow] the LLM endpoint does not answer ({trouble}); LLM turns will fall "
                    "back to the classical proposal until it does", highlight=False,
                )
            self.proposer.llm = client
            self.console.print(f"LLM {self.cfg.llm.model} ready in {client.startup_seconds:.1f}s")
            yield client.startup_seconds

    def trainer_settings(self) -> dict:
        """What a trial measures besides its parameters, flattened: the model, optimizer and data settings and the
        trial's budget, limit and dtype; the trainer, and a surrogate's data and models. A study resumed with other
        values would mix incomparable trials."""
        flat = {**self._trainer_flat(), "trainer.name": self.cfg.trainer.name}
        if self.surrogate is not None:
            flat.update({"surrogate.data_id": self.surrogate.obs.data_id, "surrogate.noise_std": self.surrogate.noise_std,
                         "surrogate.regressor": self.surrogate.regressor_name,
                         "surrogate.classifier": self.surrogate.classifier_name})  # fmt: skip
            if self.surrogate.curves is not None:
                flat["surrogate.curves_id"] = self.surrogate.curves.obs.data_id
        return flat

    def _trainer_flat(self) -> dict:
        trial = self.cfg.trial
        if self.script is not None:  # what runs (its text's hash: an edited script is another trainer), and how
            t = self.cfg.trainer
            return {"trainer.path": str(Path(t.path).resolve()) if t.path else None, "trainer.target": t.target,
                    "trainer.sha256": script.sha256(self.script.text), "trainer.args": list(t.args),
                    "trainer.metric": t.metric, "trial.memory_limit_gb": trial.memory_limit_gb}  # fmt: skip
        flat = _flatten({"model": self.cfg.model, "optim": self.cfg.optim, "data": self.cfg.data})
        flat.pop("data.cache_dir")  # where the token shards are cached changes nothing they contain
        flat.update({"trial.time_budget_s": trial.time_budget_s, "trial.memory_limit_gb": trial.memory_limit_gb,
                     "trial.compute_dtype": trial.compute_dtype, "trial.budget": resolve_budget(trial),
                     "trial.budget_flops": trial.budget_flops, "trial.budget_tokens": trial.budget_tokens,
                     "trial.budget_steps": trial.budget_steps})  # fmt: skip
        return flat

    def _check_trials_are_journaled(self) -> None:
        """Refuse a folder with trial folders but no journal, or a 0-byte one: a journal lost or emptied would
        otherwise start a new study over the old trials (and rerun them into the same folders). Checked before
        the journal is opened, which would turn an empty file into a new journal."""
        path = self.run_dir / JOURNAL_FILE
        old = sorted(d.name for d in (self.run_dir / "trials").glob("*") if d.is_dir())
        if old and (not path.exists() or path.stat().st_size == 0):
            state = "is empty (0 bytes)" if path.exists() else "is missing"
            raise StudyError(
                f"{self.run_dir} holds {len(old)} trial folder(s) ({old[0]}, …) but its journal {state}; restore "
                f"{path.name}, or give this study a new folder (hydra.run.dir)"
            )

    def _check_same_study(self, journal: Journal) -> None:
        info = {"method": self.method, "space_id": self.space.space_id, "seed": self.cfg.seed, "metric": self.metric,
                "direction": self.cfg.study.direction}  # fmt: skip
        stored = journal.study_info()
        clash = [(k, stored[k], v) for k, v in info.items() if k in stored and stored[k] != v]
        trainer = self.trainer_settings()
        stored_trainer = stored.get("trainer", trainer)  # journals before this check have none: accept them
        if "trainer" in stored:  # a key added since the journal was written had the value it has there
            stored_trainer = {**KEYS_ADDED, "trainer.name": "gpt", **stored_trainer}
        clash += [(k, stored_trainer.get(k), v) for k, v in trainer.items() if stored_trainer.get(k, v) != v]
        pruner = self.pruner.settings()
        stored_pruner = {"study.pruner": "none", **stored.get("pruner", {})} if stored else pruner  # before pruners: none
        clash += [(k, stored_pruner.get(k), v) for k, v in pruner.items() if stored_pruner.get(k) != v]
        # The method's options as the proposer takes them (its defaults filled in); journals before they were
        # recorded cannot say which they ran with and are accepted. An option added since ran as it did before.
        options = json.loads(json.dumps({**proposer_options(self.method, self.cfg.protocol),
                                          **self.cfg.method.options}))  # fmt: skip
        stored_options = options
        if "method_options" in stored:
            stored_options = {**options_added(self.method, self.cfg.protocol), **stored["method_options"]}
        ran, runs = (resolved_options(self.method, o, self.cfg.protocol) for o in (stored_options, options))
        clash += [(f"method.options.{k}", ran.get(k), v) for k, v in runs.items() if ran.get(k, v) != v]
        protocol = dataclasses.asdict(self.cfg.protocol)
        if stored:  # a journal written before protocols existed ran jaxhpo's; a key added since did not apply
            stored_protocol = {**protocol, **stored["protocol"]} if "protocol" in stored else \
                dataclasses.asdict(ProtocolConfig())  # fmt: skip
            clash += [(f"protocol.{k}", stored_protocol.get(k), v) for k, v in protocol.items()
                      if stored_protocol.get(k) != v]  # fmt: skip
        if clash:
            k, was, now = clash[0]
            raise StudyError(
                f"{self.run_dir} holds a study with {k}={was!r}, not {now!r}; resume it with the same settings, "
                "or give this one its own folder (hydra.run.dir, or hydra.sweep.subdir in a grid)"
            )
        # What may change on resume (a larger budget, more workers) is recorded as of the latest run.
        study = self.cfg.study
        updates = {"budget_s": study.budget_s, "max_trials": study.max_trials, "workers": study.workers}
        if not stored:
            updates.update(info, space=self.space.definition(), space_name=self.space.name, method_options=options)
        if "base_space" not in stored and self.space is not self.file_space:
            updates["base_space"] = self.file_space.definition()  # a method that searches more (hybrid): compared on it
        if "trainer" not in stored:
            updates["trainer"] = trainer
        if "protocol" not in stored:
            updates["protocol"] = protocol
        if "pruner" not in stored:
            updates["pruner"] = pruner
        journal.set_study_info(updates)

    def _loop(self, pool: WorkerPool, journal: Journal, history: list[TrialRecord],
              interrupted: list[PendingTrial]) -> None:  # fmt: skip
        """Keep every free worker busy until no more trials may start, then wait for the running ones."""
        running: dict[int, PendingTrial] = {}
        rerun = {p.number for p in interrupted}  # already journaled as pending
        stop = self._refusal_stop(history)  # a resumed study that had stopped stops again at once
        live = LiveStatus(history, running, self.cfg.study.max_trials, self.cfg.study.budget_s,
                          lambda: self._spent(history), sign=self.sign)  # fmt: skip
        with self.console.status(live):
            while True:
                while pool.free and not stop and (interrupted or not self._done(history, running)):
                    if interrupted:
                        trial = interrupted.pop(0)
                    else:
                        number = journal.next_number()
                        live.doing = f"asking {self.method} for trial {number}"
                        trial = self._ask(number, history, running)
                        live.doing = ""
                    if (reason := trial.meta.pop("not_run", None)) is not None:  # lost to its LLM call (paper)
                        now = time.time()
                        self._finish(journal, trial, Outcome("crashed", None, NOT_RUN_PREFIX + reason, 0.0, now, now),
                                     history)  # fmt: skip
                        stop = self._refusal_stop(history)
                        continue
                    try:
                        train_cfg, repairs = self._job(trial.params)
                    except ValueError as e:  # ConfigError, or a value the trainer's schema rejects: never run
                        self._finish(journal, trial, refused(str(e).splitlines()[0], time.time()), history)
                        stop = self._refusal_stop(history)  # refusals cost no time: the budget never ends them
                        continue
                    if self.script is None and (footprint := self.footprints.predicted_oom(train_cfg)) is not None:
                        now = time.time()
                        result = {"predicted": True, "cached": True, "preflight": footprint}
                        self._finish(journal, trial, Outcome("oom", None, oom_message(footprint), 0.0, now, now,
                                                             result), history)  # fmt: skip
                        continue
                    if repairs:
                        trial.meta["repairs"] = repairs
                    if self.pruner.active:
                        train_cfg.rungs = list(self.pruner.rungs)
                    if "train_seed" in trial.meta:  # a rerun under another training seed (hybrid's noise)
                        train_cfg.seed = int(trial.meta["train_seed"])
                    trial_dir = self._trial_dir(trial.number)
                    if "agent" in trial.meta and (why := self._edit_fails(trial, trial_dir, train_cfg)):
                        now = time.time()  # an edit that cannot run: crashed, shown to the next prompt; not refused
                        self._finish(journal, trial, Outcome("crashed", None, f"source check: {why}", 0.0, now, now),
                                     history)  # fmt: skip
                        continue
                    if trial.number in rerun:
                        if note := pool.cancel_stale(trial_dir):
                            self.console.print(note, highlight=False)
                    else:
                        journal.start(trial)
                    watch = self.pruner.watch(trial.number, trial_dir) if self.pruner.active else None
                    pool.start(trial.number, train_cfg, trial_dir, self.trial.timeout_s, watch)
                    running[trial.number] = trial
                if not running:
                    if stop:
                        raise StudyError(stop)
                    return
                for number, outcome in pool.wait():
                    self._finish(journal, running.pop(number), outcome, history)

    def _refusal_stop(self, history: list[TrialRecord]) -> str | None:
        """Why the study must stop, once the last `study.max_consecutive_refusals` finished trials were all refused
        for the same reason (see `_refusal_reason`); None until then. Trials count in the order they finished, those
        read back on resume included; trials still running finish first."""
        limit = self.cfg.study.max_consecutive_refusals
        if not limit or len(history) < limit:
            return None
        last = history[-limit:]
        reasons = {_refusal_reason(t) for t in last}
        if len(reasons) != 1 or None in reasons:
            return None
        if last[-1].error.startswith(NOT_RUN_PREFIX):
            return (
                f"stopped after {limit} consecutive trials were lost to their LLM call: "
                f"{last[-1].error.removeprefix(NOT_RUN_PREFIX)}; fix the LLM endpoint (llm.*)"
            )
        return (
            f"stopped after {limit} consecutive trials were refused for the same reason: "
            f"{last[-1].error.removeprefix(_REFUSED)}; fix the space or the base configuration"
        )

    def _done(self, history: list[TrialRecord], running: dict) -> bool:
        """No further trial may start: max_trials started, or the budget spent by the finished ones."""
        budget = self.cfg.study.budget_s
        spent = self._spent(history)
        started = len(history) + len(running)
        return started >= self.cfg.study.max_trials or (budget is not None and spent >= budget)

    def _edit_fails(self, trial: PendingTrial, trial_dir: Path, train_cfg: TrainConfig) -> str | None:
        """Write a trial's edited trainer into its folder and check it (jaxhpo.source); why it cannot run, or None."""
        edit = trial.meta["agent"]
        if edit.get("error"):
            return edit["error"]
        source.write_tree(trial_dir, edit["text"])
        return source.check(trial_dir, OmegaConf.to_yaml(OmegaConf.structured(train_cfg)))

    def _trial_dir(self, number: int) -> Path:
        return self.run_dir / "trials" / f"{number:04d}"

    def _spent(self, history: list[TrialRecord]) -> float:
        """The budget spent by the finished trials, as protocol.budget_charge counts it."""
        return sum(charged_seconds(t, self.cfg.protocol.budget_charge) for t in history)

    def _ask(self, number: int, history: list[TrialRecord], running: dict[int, PendingTrial]) -> PendingTrial:
        if number == 0:
            proposal = Proposal(self.space.default(), "default")
        else:
            proposal = self.proposer.ask(history, [p.params for p in running.values()])
        meta = dict(proposal.meta)
        llm_turn = meta.pop("llm_turn", None)
        return PendingTrial(number, proposal.params, proposal.proposer, meta, llm_turn, time.time())

    def _oriented(self, trial: TrialRecord) -> TrialRecord:
        """The trial as the proposers see it (its value negated when the metric is maximized); its own inverse."""
        if self.sign > 0 or trial.val_bpb is None:
            return trial
        return dataclasses.replace(trial, val_bpb=-trial.val_bpb)

    def _scored(self, outcome: Outcome) -> Outcome:
        """A built-in trainer's outcome scored by study.metric, a key of its result (scripts read their own)."""
        if outcome.status != "ok" or self.metric == "val_bpb" or self.script is not None:
            return outcome
        value = outcome.result.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return dataclasses.replace(outcome, status="crashed", val_bpb=None,
                                       error=f"the trainer's result has no number {self.metric}")  # fmt: skip
        if not math.isfinite(value):
            return dataclasses.replace(outcome, status="diverged", val_bpb=None, error=f"{self.metric} is {value}")
        return dataclasses.replace(outcome, val_bpb=float(value))

    def _finish(self, journal: Journal, trial: PendingTrial, outcome: Outcome, history: list[TrialRecord]) -> None:
        """Journal a finished trial (dropping its pending row), tell the proposer, show it."""
        outcome = self._scored(outcome)
        record = TrialRecord(
            number=trial.number, params=trial.params, space_id=self.space.space_id, method=self.method,
            proposer=trial.proposer, status=outcome.status, val_bpb=outcome.val_bpb, error=outcome.error,
            wall_seconds=outcome.wall_seconds, training_seconds=outcome.training_seconds,
            peak_memory_mb=outcome.peak_memory_mb, started_at=outcome.started_at, ended_at=outcome.ended_at,
            seed=self.cfg.seed, meta=trial.meta, result=outcome.result,
        )  # fmt: skip
        journal.append(record, llm_turn=trial.llm_turn)
        measured = outcome.result.get("predicted") and not outcome.result.get("cached")  # a pre-flight's verdict
        if measured and (cfg := self._train_config(trial.params)) is not None:  # for later trials of these shapes
            self.footprints.record(cfg, outcome.result, f"trial {trial.number} of {self.run_dir}")
        journal.export_csv(self.run_dir / "trials.csv")
        if self.logger is not None:
            self.logger.trial(record, self._trial_dir(record.number))
        told = self._oriented(record)
        self.proposer.tell(told)
        self.pruner.tell(record)
        history.append(told)
        self._show(record, history, trial.llm_turn)

    def _show(self, record: TrialRecord, history: list[TrialRecord], llm_turn: dict | list | None) -> None:
        calls = llm_turn if isinstance(llm_turn, list) else [llm_turn] if llm_turn else []
        if calls and calls[0].get("fallback") and not self._warned_fallback:  # the first call decides the turn
            self._warned_fallback = True
            self.console.print(
                f"[yellow]warning:[/yellow] the LLM turn of trial {record.number} fell back to the classical "
                f"proposal ({calls[0]['fallback']}); later fallbacks are recorded in the journal without a warning",
                highlight=False,
            )
        ok = [t.val_bpb for t in history if not t.failed]  # as told: a maximized metric negated
        best = f"{self.sign * min(ok):.4f}" if ok else "-"
        value = f"{record.val_bpb:.4f}" if record.val_bpb is not None else "-"
        style = {"ok": "green", "pruned": "yellow"}.get(record.status, "red")
        budget = self.cfg.study.budget_s
        left = f"{max(0.0, budget - self._spent(history)):.0f}s" if budget else "∞"
        line = (
            f"trial {record.number:>3}  {record.proposer:<14} [{style}]{record.status:<8}[/{style}] "
            f"{self.metric} {value:>7}  best {best:>7}  {record.wall_seconds:5.0f}s  budget left {left}"
        )
        if any(c.get("latency_s") is not None for c in calls):
            seconds = sum(c.get("latency_s") or 0.0 for c in calls)
            line += f"  [dim]LLM {seconds:.1f}s{f' ({len(calls)} calls)' if len(calls) > 1 else ''}[/dim]"
        if record.error:
            line += f"  [dim]{record.error[:80]}[/dim]"
        self.console.print(line, highlight=False)


_REFUSED = "refused: "  # how jaxhpo.trial.refused marks the error of a trial that never ran


def _refusal_reason(record: TrialRecord) -> str | None:
    """What a refused trial's error says with its values left out, None for a trial that was not refused.

    The text up to the first "=" (the key, in the trainer's "invalid KEY=VALUE: why"), digits masked: the refusals
    "invalid model.head_dim=48: must divide the model width 192" and "invalid model.head_dim=96: ... 320" have one
    reason, whatever the values, while one of model.eval_tokens has another."""
    if record.status == "crashed" and (record.error or "").startswith(NOT_RUN_PREFIX):
        return NOT_RUN_PREFIX  # lost to an LLM call (protocol=paper): whatever the error, no trial ran
    if record.status != "crashed" or not (record.error or "").startswith(_REFUSED):
        return None
    return re.sub(r"\d+", "#", record.error.split("=", 1)[0])


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": ModelConfig(depth=2, ...)} -> {"model.depth": 2, ...}, over dataclasses and dicts."""
    flat = {}
    for key, value in tree.items():
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat
