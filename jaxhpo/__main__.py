"""`python -m jaxhpo +method=NAME [overrides]`: run (or resume) a study in Hydra's run folder.

With `-m` (`--multirun`), every combination of comma lists is one study in `<sweep dir>/<method>/seed<k>/`, carried
by any Hydra launcher: basic (sequential), `hydra/launcher=joblib` (local processes), `submitit_local`/`submitit_slurm`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException, HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "hydra_configs"
GROUPS = ("method", "model", "space", "data", "llm")  # the swappable parts; a method must be chosen


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
    from jaxhpo.space import SpaceError
    from jaxhpo.study import Study, StudyError
    from model.config import ConfigError
    from model.data import DataError

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        summary = Study(OmegaConf.to_object(cfg), run_dir).run()
    except (StudyError, SpaceError, ConfigError, DataError, JournalError, LLMError, ValueError) as e:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # Logged to the console and the job's own log, since Hydra re-raises only the grid's first failure;
            # an exit here would end the whole grid, an exception fails this job only.
            log.error(f"error: {e}")
            raise JobError(str(e)) from None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    best = summary["best_val_bpb"]
    print(
        f"best val_bpb {best if best is not None else '-'} (trial {summary['best_trial']}) over "
        f"{summary['trials']} trials, {summary['failed_percent']}% failed; results in {run_dir}"
    )


def main() -> None:
    error = check_group_arguments(sys.argv[1:])
    inspecting = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
    if error and not inspecting & {a.split("=")[0] for a in sys.argv[1:]}:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    prepare_process()
    # Hydra raises its errors (bad overrides, unknown keys, values of the wrong type, a failed grid job) instead of
    # reporting them over several lines; they are reported here in one. Unless the user asked for Hydra's traces.
    wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as e:
        if wants_trace:
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)


def error_line(e: Exception) -> str:
    """A Hydra or OmegaConf error in one line: Hydra's first paragraph (its hint included, the list of config
    search paths not), an OmegaConf error's first line (not its full_key/type details), and the OmegaConf cause."""
    text = str(e).strip()
    line = text.splitlines()[0] if isinstance(e, OmegaConfBaseException) else " ".join(text.split("\n\n")[0].split())
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        line += f" ({str(cause).strip().splitlines()[0]})"
    return line


if __name__ == "__main__":
    main()
