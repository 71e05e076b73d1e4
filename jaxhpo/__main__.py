"""`python -m jaxhpo +method=NAME [overrides]`: run (or resume) a study in Hydra's run folder.

With `-m` (`--multirun`), every combination of comma lists is one study in `<sweep dir>/<method>/seed<k>/`, carried
by any Hydra launcher: basic (sequential), `hydra/launcher=joblib` (local processes), `submitit_local`/`submitit_slurm`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
METHOD_DIR = Path(__file__).resolve().parents[1] / "hydra_configs" / "method"


def check_method_argument(argv: list[str]) -> str | None:
    """One line of error for a missing or unknown +method=... (sweeps included), before Hydra composes anything."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    known = sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))
    given = [a for a in argv if a.lstrip("+").startswith("method=")]
    if not given:
        return f"choose a method with +method=NAME, one of: {', '.join(known)}"
    try:
        overrides = OverridesParser.create().parse_overrides(given)
    except HydraException:
        return None  # a syntax error: Hydra reports it with its own message
    for override in overrides:
        value = override.value()
        if isinstance(value, Glob):
            names = value.filter(known)
            if not names:
                return f"{override.input_line} matches no method; choose from: {', '.join(known)}"
        else:
            names = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(value)]
        for name in names:
            if name not in known:
                return f"unknown method {name!r}; choose one of: {', '.join(known)}"
    return None


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
            raise JobError(f"error: {e}") from None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    best = summary["best_val_bpb"]
    print(
        f"best val_bpb {best if best is not None else '-'} (trial {summary['best_trial']}) over "
        f"{summary['trials']} trials, {summary['failed_percent']}% failed; results in {run_dir}"
    )


def main() -> None:
    error = check_method_argument(sys.argv[1:])
    inspecting = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
    if error and not inspecting & {a.split("=")[0] for a in sys.argv[1:]}:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    prepare_process()
    hydra_main()


if __name__ == "__main__":
    main()
