"""`python -m jaxhpo +method=NAME [overrides]`: run (or resume) a study in Hydra's run folder."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

METHOD_DIR = Path(__file__).resolve().parents[1] / "hydra_configs" / "method"


def check_method_argument(argv: list[str]) -> str | None:
    """One line of error for a missing or unknown +method=..., before Hydra composes anything."""
    known = sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("method=")]
    if not given:
        return f"choose a method with +method=NAME, one of: {', '.join(known)}"
    for value in given:
        for name in value.split(","):
            if name not in known:
                return f"unknown method {name!r}; choose one of: {', '.join(known)}"
    return None


@hydra.main(config_path="pkg://hydra_configs", config_name="config", version_base=None)
def hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from jaxhpo.journal import JournalError
    from jaxhpo.space import SpaceError
    from jaxhpo.study import Study, StudyError
    from model.config import ConfigError
    from model.data import DataError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = Study(OmegaConf.to_object(cfg), run_dir).run()
    except (StudyError, SpaceError, ConfigError, DataError, JournalError, ValueError) as e:
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
    import jax

    # The study process only asks and tells (evosax runs on JAX): keep it off the GPU, which belongs to the
    # trial subprocesses. An environment variable would be inherited by them; this setting is not.
    jax.config.update("jax_platforms", "cpu")
    import jaxhpo.config  # noqa: F401 - registers the structured-config schemas Hydra composes against

    hydra_main()


if __name__ == "__main__":
    main()
