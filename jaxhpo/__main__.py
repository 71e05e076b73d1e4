"""`python -m jaxhpo +method=NAME [overrides]`: run (or resume) a study in Hydra's run folder.

With `-m` (`--multirun`), every combination of comma lists is one study in `<sweep dir>/<method>/seed<k>/`, carried
by any Hydra launcher: basic (sequential), `hydra/launcher=joblib` (local processes), `submitit_local`/`submitit_slurm`.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException, HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "hydra_configs"
GROUPS = ("method", "model", "space", "data", "llm", "protocol", "trainer", "logger")  # the swappable parts; a method must be chosen
EXIT_BAD_INPUT = 2
_where: dict[str, str] = {}  # the running study's run folder (and grid folder), for the message after a Ctrl-C


def check_group_arguments(argv: list[str]) -> str | None:
    """One line of error for a missing +method=..., or for an option of a config group (method, model, space, data,
    llm; sweeps included) that neither hydra_configs/ nor a --config-dir holds, before Hydra composes anything."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    extra = [d.removeprefix("file://") for d in _flag_values(argv, ("--config-dir", "-cd"))]
    other_sources = any(a.split("=")[0] in ("--config-path", "-cp", "hydra.searchpath") for a in argv)
    if other_sources or any("://" in d for d in extra):
        return None  # another primary config, or config folders this cannot list: Hydra alone knows their options
    dirs = [CONFIG_DIR, *map(Path, extra)]
    given = {g: [a for a in argv if re.match(rf"^\+{{0,2}}{g}(@[\w.]+)?=", a)] for g in GROUPS}
    parser = OverridesParser.create()
    for group, args in given.items():
        known = sorted({f.stem for d in dirs for f in (d / group).glob("*.yaml")})
        if group == "method" and not args:
            return f"choose a method with +method=NAME, one of: {', '.join(known)}"
        try:
            overrides = parser.parse_overrides(args)
        except HydraException:
            return None  # a syntax error: Hydra reports it with its own message
        for override in overrides:
            value = override.value()
            if isinstance(value, Glob):
                names = value.filter(known)
                if not names:
                    return f"{override.input_line} matches no {group}; choose from: {', '.join(known)}"
            else:
                names = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(value)]
            for name in names:
                if name not in known:
                    return f"unknown {group} {name!r}; choose one of: {', '.join(known)}"
    return None


def flags_first(argv: list[str]) -> list[str]:
    """Hydra's flags (with their values) moved before the overrides, order otherwise kept: argparse refuses an
    override after a flag (`+method=tpe --config-dir d space=s` gave a bare "unrecognized arguments")."""
    from hydra._internal.utils import get_args_parser

    actions = get_args_parser()._option_string_actions
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        action = actions.get(arg.split("=", 1)[0]) if arg.startswith("-") else None
        if action is None:
            overrides.append(arg)
        elif "=" in arg or action.nargs == 0:
            flags.append(arg)
        elif action.nargs is None and i + 1 < len(argv):  # a flag that takes one value
            flags += argv[i : i + 2]
            i += 1
        elif action.nargs == "?" and i + 1 < len(argv) and argv[i + 1] in (action.choices or ()):
            flags += argv[i : i + 2]
            i += 1
        else:
            flags.append(arg)
        i += 1
    return flags + overrides


def overridden_by_space(overrides: list[str], space) -> str | None:
    """One line of error for a command-line override of a trainer key the space sets on every trial (which would
    be silently ignored), or None."""
    owners = {p.key: p.name for p in space.params}
    for override in overrides:
        key, eq, _ = override.lstrip("+~").partition("=")
        if eq and key in owners:
            name = owners[key]
            return (f"{override} has no effect: space parameter {name} sets {key} on every trial; drop the "
                    f"override, or take {name} out of the search (~space.params.{name}) to fix {key}")  # fmt: skip
    return None


def _flag_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """The values given to a command-line flag, as `--flag VALUE` or `--flag=VALUE`."""
    values = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in flags:
            if eq:
                values.append(value)
            elif i + 1 < len(argv):
                values.append(argv[i + 1])
    return values


def prepare_process() -> None:
    """Pin this process's JAX to the CPU and register the config schemas; idempotent."""
    import jax

    # The study process only asks and tells (evosax runs on JAX): keep it off the GPU, which belongs to the
    # trial subprocesses. An environment variable would be inherited by them; this setting is not.
    jax.config.update("jax_platforms", "cpu")
    import jaxhpo.config  # noqa: F401 - registers the structured-config schemas Hydra composes against


class JobError(CompactHydraException):
    """A job of a multirun stopped by bad input: Hydra re-raises it once the other jobs have run."""


@hydra.main(config_path="pkg://hydra_configs", config_name="config", version_base=None)
def hydra_main(cfg: DictConfig) -> None:
    # joblib's and submitit's workers unpickle and call this function without ever running main().
    prepare_process()
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from jaxhpo.journal import JournalError
    from jaxhpo.llm.client import LLMError
    from jaxhpo.space import Space, SpaceError
    from jaxhpo.study import Study, StudyError
    from model.config import ConfigError
    from model.data import DataError

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    _where.update(run_dir=str(run_dir), **({"sweep_dir": hydra_cfg.sweep.dir} if multirun else {}))
    try:
        try:
            study_cfg = OmegaConf.to_object(cfg)
        except MissingMandatoryValue as e:  # `key=???`, or a required key no config gave a value
            raise StudyError(f"missing value for {e.full_key}: give it one (e.g. {e.full_key}=VALUE)") from None
        if conflict := overridden_by_space(list(hydra_cfg.overrides.task), Space.from_config(cfg.space)):
            raise StudyError(conflict)
        summary = Study(study_cfg, run_dir).run()
    except (StudyError, SpaceError, ConfigError, DataError, JournalError, LLMError, ValueError) as e:
        if multirun:
            # Logged to the console and the job's own log, since Hydra re-raises only the grid's first failure;
            # an exit here would end the whole grid, an exception fails this job only.
            log.error(f"error: {e}")
            raise JobError(str(e)) from None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    best = summary["best_val_bpb"]
    print(
        f"best val_bpb {best if best is not None else '-'} (trial {summary['best_trial']}) over "
        f"{summary['trials']} trials, {summary['failed_percent']}% failed; results in {run_dir}"
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken down the same clean path as Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    sys.argv[1:] = flags_first(sys.argv[1:])
    error = check_group_arguments(sys.argv[1:])
    inspecting = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
    if error and not inspecting & {a.split("=")[0] for a in sys.argv[1:]}:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    signal.signal(signal.SIGTERM, _terminate)
    prepare_process()
    # Hydra raises its errors (bad overrides, unknown keys, values of the wrong type, a failed grid job) instead of
    # reporting them over several lines; they are reported here in one. Unless the user asked for Hydra's traces.
    wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    import yaml

    try:
        hydra_main()
    except KeyboardInterrupt as e:
        print(interrupted_text(isinstance(e, Terminated)), file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT))
    except (HydraException, OmegaConfBaseException, yaml.YAMLError, OSError) as e:
        if wants_trace:
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except ValueError as e:
        # logging.config's "Unable to configure handler 'file'": Hydra could not open the run folder's log file
        if wants_trace or not isinstance(e.__cause__, OSError):
            raise
        print(f"error: {error_line(e.__cause__)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def interrupted_text(terminated: bool) -> str:
    """What a stopped study says: which trials were stopped (they run again on resume) and the exact command
    that resumes it."""
    from jaxhpo.journal import JOURNAL_FILE, Journal, JournalError

    what = "terminated (SIGTERM)" if terminated else "interrupted"
    if "run_dir" not in _where:
        return f"{what} before the study started; nothing was run"
    run_dir = Path(_where["run_dir"])
    try:
        with Journal(run_dir / JOURNAL_FILE, readonly=True) as journal:
            stopped, finished = [p.number for p in journal.pending()], len(journal.trials())
    except JournalError:
        stopped, finished = [], 0
    if stopped:
        numbers = ", ".join(map(str, stopped))
        trials = f"trial{'s' if len(stopped) > 1 else ''} {numbers} {'were' if len(stopped) > 1 else 'was'} stopped"
        trials += " and will run again"
    else:
        trials = "no trial was running"
    key, folder = ("hydra.sweep.dir", _where["sweep_dir"]) if "sweep_dir" in _where else ("hydra.run.dir", run_dir)
    args = [a for a in sys.argv[1:] if not a.startswith(f"{key}=")] + [f"{key}={folder}"]
    # "python" when that is this interpreter on the PATH (an activated venv), else the interpreter's full path
    same = shutil.which("python") and Path(shutil.which("python")).resolve() == Path(sys.executable).resolve()
    command = shlex.join(["python" if same else sys.executable, "-m", "jaxhpo", *args])
    return f"{what}: {trials}; {finished} finished trials are kept in {run_dir / JOURNAL_FILE}\nresume with: {command}"


def os_error_line(e: OSError) -> str:
    """A file-system error in one line: where, what, and (for a full or unwritable disk) what to do."""
    import errno

    where = f"{e.filename}: " if e.filename else ("" if "run_dir" in _where else "setting up the run folder: ")
    room, writable = "free some space, or choose another folder", "choose a writable folder"
    hints = {errno.ENOSPC: room, errno.EDQUOT: room, errno.EROFS: writable, errno.EACCES: writable}
    hints = {k: f"{v} with hydra.run.dir=PATH" for k, v in hints.items()}
    return f"{where}{e.strerror}" + (f"; {hints[e.errno]}" if e.errno in hints else "")


def error_line(e: Exception) -> str:
    """A Hydra or OmegaConf error in one line: Hydra's first paragraph (its hint included, the list of config
    search paths not), an OmegaConf error's first line (not its full_key/type details), and the OmegaConf cause."""
    import yaml

    if isinstance(e, OSError) and e.strerror:
        return os_error_line(e)
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"{mark.name}, line {mark.line + 1}: " if mark else ""
        return f"invalid YAML: {where}{e.problem}" + (f" ({e.context})" if e.context else "")
    text = str(e).strip()
    line = text.splitlines()[0] if isinstance(e, OmegaConfBaseException) else " ".join(text.split("\n\n")[0].split())
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        line += f" ({str(cause).strip().splitlines()[0]})"
    return line


if __name__ == "__main__":
    main()
