"""Bad configuration values, generated from the schemas: each is refused before any trial, in one line, exit 2.

For every field of `jaxhpo.config.StudyConfig` (but `method` and `space`, config groups tested elsewhere): a value of
the wrong type, a value outside the field's range (the bad example of its rule in `model.config.FIELD_RULES` or
`jaxhpo.config.STUDY_RULES`), missing (`???`), and null where the field is not Optional. A study in the same
process costs a tenth of a second, a `python -m jaxhpo` subprocess seconds of imports: the cases run in-process
through `jaxhpo.__main__.main()`, and a few of them as real subprocesses too, which must print the same line.

Also here: a space checked against the trainer's schema before the first trial, and a study that stops once
trials keep being refused for one reason.
"""

import dataclasses
import json
import types
from typing import get_args, get_origin, get_type_hints

import pytest

from jaxhpo.config import STUDY_RULES, StudyConfig
from jaxhpo.journal import Journal, TrialRecord
from jaxhpo.space import Space, SpaceError
from jaxhpo.study import Study
from jaxhpo.trial import TrialConfig, check_space_values, trial_config
from model.config import FIELD_RULES, ConfigError, ModelConfig, TrainConfig
from tests.conftest import run_cli

GROUPS = ("method", "space")  # chosen by name from hydra_configs/, not values of a field
# A space that sets no field of the study (log_every_s is the trainer's own), so every case reaches its field's
# rule instead of the check that refuses overriding a key the space sets on every trial.
SPACE_YAML = """defaults: [space_schema, _self_]
name: bystander
params:
  LOG_EVERY_S: {type: float, key: log_every_s, low: 1.0, high: 10.0, default: 5.0}
"""
# check_llm_config states its rules as code, not as a table (jaxhpo/llm/client.py): what it refuses, by field.
LLM_BAD = {
    "llm.provider": "other", "llm.base_url": "ftp://example.com", "llm.model": "", "llm.temperature": -1,
    "llm.max_tokens": 0, "llm.timeout_s": 0, "llm.retries": -1, "llm.backoff_s": -1, "llm.json_mode": "other",
    "llm.schema_style": "other", "llm.n_ctx": 0, "llm.n_threads": 0, "llm.startup_timeout_s": 0,
}  # fmt: skip
# Fields with no range beyond their type, and why.
EXEMPT = {
    "data.train_files": "paths or glob patterns: whether they match any file is the data module's check",
    "data.val_files": "paths or glob patterns: whether they match any file is the data module's check",
    "data.cache_dir": "a folder: any path is a place to cache in",
    "trial.save_checkpoint": "a bool: its type is its range",
    "trial.preflight": "a bool: its type is its range",
    "trial.compile_cache": "a bool: its type is its range",
    "trial.footprint_cache": "a bool: its type is its range",
    "trial.fork_server": "a bool: its type is its range",
    "trial.compile_cache_dir": "a folder: any path is a place to cache in",
    "trial.submitit.partition": "a partition name: only the cluster knows which exist",
    "trial.submitit.parameters": "submitit's own parameters, passed through to it",
    "llm.api_key_env": "an environment variable's name: whether it is set matters only when the LLM is asked",
    "protocol.name": "a label for the set of rules: every rule is its own checked key",
    "protocol.available_vram": "free text the paper prompts show the LLM",
    "protocol.avoid_failures": "a bool: its type is its range",
    "protocol.smac_deterministic": "a bool: its type is its range",
    "llm.flash_attn": "a bool: its type is its range",
    "surrogate.table": "a path: whether it holds a table is the surrogate's check, made only under trainer=surrogate",
    "surrogate.journals": "paths: whether they hold journals is the surrogate's check, made only under trainer=surrogate",
    "surrogate.curves": "a path: whether it holds learning curves is checked only by a surrogate study that prunes",
    "surrogate.cache_dir": "a folder: any path is a place to cache in (one that cannot be written costs a fit)",
    "model.mix_scalars": "a bool: its type is its range",
    "model.qk_norm": "a bool: its type is its range",
    "model.tie_embeddings": "a bool: its type is its range",
    "trainer.path": "a script: checked (it exists, it parses, it defines the space's constants) under trainer=script",
    "trainer.args": "the script's own arguments, passed through to it",
    "trainer.python": "an interpreter: checked (it exists) under trainer=script|python",
    "trainer.cwd": "a folder: checked (it exists) under trainer=script|python",
    "trainer.target": "a function: checked (it imports) under trainer=python",
    "trainer.metric": "how to read the metric: checked (a regex compiles, with a group) under trainer=script|python",
    "logger.tracking_uri": "MLflow's store: one that fails is a warning, and the study goes on without it",
    "logger.experiment": "an MLflow experiment's name: any name makes one",
}
RULES = {**FIELD_RULES, **STUDY_RULES}


def leaves(cls: type, prefix: str = ""):
    """(dotted key, annotated type) for every leaf field of a dataclass schema."""
    for f in dataclasses.fields(cls):
        kind = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            yield from leaves(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", kind


FIELDS = [(key, kind) for key, kind in leaves(StudyConfig) if key.split(".")[0] not in GROUPS]


def bad_example(key: str):
    """The rule table's refused value for `key`; None for an exempt field."""
    if key in RULES:
        return RULES[key].bad_example
    return LLM_BAD.get(key)


def as_override(value) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def cases():
    for key, kind in FIELDS:
        args = get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        base = get_origin(base) or base
        if base is not str:  # any value is a string: a str field's bad values are those outside its set
            yield pytest.param(key, "abc", "type", id=f"{key}-type")
        if (bad := bad_example(key)) is not None:
            yield pytest.param(key, as_override(bad), "range", id=f"{key}-range")
        yield pytest.param(key, "???", "missing", id=f"{key}-missing")
        if not optional:
            yield pytest.param(key, "null", "null", id=f"{key}-null")


CASES = list(cases())


def test_every_field_has_a_rule_or_a_reason_to_have_none():
    keys = {key for key, _ in FIELDS}
    unruled = sorted(k for k in keys if bad_example(k) is None and k not in EXEMPT)
    assert not unruled, f"give these fields a rule in FIELD_RULES/STUDY_RULES, or list them in EXEMPT: {unruled}"
    assert not set(EXEMPT) - keys, "EXEMPT names fields the schema no longer has"
    assert {k for k in RULES if "." in k and k.split(".")[0] in ("model", "optim", "data")} <= keys


def study_args(tmp_path, key: str, value: str) -> list[str]:
    conf = tmp_path / "conf"
    (conf / "space").mkdir(parents=True, exist_ok=True)
    (conf / "space" / "bystander.yaml").write_text(SPACE_YAML)
    return [
        "+method=random", "space=bystander", f"--config-dir={conf}", f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}", f"{key}={value}",
    ]  # fmt: skip


def assert_refused(code: int, stderr: str, key: str, kind: str, run_dir) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    assert key in lines[0], lines[0]
    if kind == "range" and key in RULES:
        assert f"invalid {key}=" in lines[0] and RULES[key].why in lines[0], lines[0]
    assert not (run_dir / "journal.sqlite").exists()
    return lines[0]


@pytest.mark.parametrize("key, value, kind", CASES)
def test_bad_value_is_refused_in_one_line_before_any_trial(in_process, tmp_path, key, value, kind):
    code, stderr = in_process(study_args(tmp_path, key, value))
    assert_refused(code, stderr, key, kind, tmp_path / "run")


# One case of each layer that refuses: OmegaConf's type check, the trainer's field rule, the study's rule, the
# LLM settings' check.
SUBPROCESS_CASES = ["model.depth-type", "model.seq_len-range", "study.max_consecutive_refusals-range",
                    "llm.temperature-range"]  # fmt: skip


@pytest.mark.parametrize("key, value, kind", [c for c in CASES if c.id in SUBPROCESS_CASES])
def test_the_command_line_refuses_as_the_in_process_run_does(in_process, tmp_path, key, value, kind):
    args = study_args(tmp_path, key, value)
    line = assert_refused(*in_process(args), key, kind, tmp_path / "run")
    proc = run_cli("jaxhpo", *args, timeout=120)
    assert assert_refused(proc.returncode, proc.stderr, key, kind, tmp_path / "run") == line


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["space.params.DEPTH.low=0"],
         "space parameter DEPTH: low=0 is not a valid model.depth: must be a positive integer"),
        (["space.params.DEPTH.type=categorical", "space.params.DEPTH.choices=[a,2]", "space.params.DEPTH.default='2'"],
         "space parameter DEPTH: choice 'a' is not a valid model.depth (an integer)"),
        (["space.params.WEIGHT_DECAY.low=-0.5"],
         "space parameter WEIGHT_DECAY: low=-0.5 is not a valid optim.weight_decay: must be >= 0"),
        (["space.params.WINDOW_PATTERN.choices=[SSSL,SXL]"],
         "space parameter WINDOW_PATTERN: choice 'SXL' is not a valid model.window_pattern: use only the letters"),
        # the default configuration is refused: trial 0 could never run
        (["model.width=96"], "invalid model.head_dim=64: must divide the model width 96"),
        (["model.eval_tokens=100"], "invalid model.eval_tokens=100: must be at least seq_len=256"),
        (["model.seq_len=-5"], "invalid model.seq_len=-5: must be at least 2"),
    ],
)
def test_a_space_or_base_that_fails_every_trial_is_refused_at_start(in_process, tmp_path, overrides, line):
    run_dir = tmp_path / "run"
    code, stderr = in_process(["+method=random", f"data.cache_dir={tmp_path}", f"hydra.run.dir={run_dir}",
                               *overrides])  # fmt: skip
    assert code == 2 and stderr.startswith(f"error: {line}") and len(stderr.splitlines()) == 1, stderr
    assert not (run_dir / "journal.sqlite").exists()


def test_rules_between_keys_refuse_a_trial_not_the_space():
    # HEAD_DIM 48 does not divide the width 64: that configuration is refused when proposed, the space is fine.
    space = Space("s", {"HEAD_DIM": {"type": "categorical", "key": "model.head_dim", "choices": ["64", "48"],
                                     "default": "64"}})  # fmt: skip
    base = TrainConfig(model=ModelConfig(width=64, seq_len=256, total_batch_size=128 * 256))
    check_space_values(space, base)
    trial_config(base, space, space.default(), TrialConfig())
    with pytest.raises(ConfigError, match="invalid model.head_dim=48: must divide the model width 64"):
        trial_config(base, space, {"HEAD_DIM": "48"}, TrialConfig())
    with pytest.raises(SpaceError, match="HEAD_DIM: choice '3' is not a valid model.head_dim: must be a positive even"):
        check_space_values(Space("s", {"HEAD_DIM": {"type": "categorical", "key": "model.head_dim",
                                                     "choices": ["64", "3"], "default": "64"}}), base)  # fmt: skip


# Trial 0 (the default, 256 evaluation tokens) trains; almost every other value of the log-uniform range is below
# seq_len=256 and refused, for one reason whatever the value.
REFUSED_SPACE_YAML = """defaults: [space_schema, _self_]
name: refused
params:
  EVAL_TOKENS: {type: int, key: model.eval_tokens, low: 1, high: 256, log: true, default: 256}
"""


def test_a_study_stops_after_consecutive_refusals_for_one_reason(tmp_path, data_cache):
    (tmp_path / "conf/space").mkdir(parents=True)
    (tmp_path / "conf/space/refused.yaml").write_text(REFUSED_SPACE_YAML)
    run_dir = tmp_path / "run"
    args = [
        "+method=random", "space=refused", f"--config-dir={tmp_path / 'conf'}", "trial.time_budget_s=2",
        "study.max_trials=50", f"data.cache_dir={data_cache}", f"trial.compile_cache_dir={data_cache}/xla_cache",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc = run_cli("jaxhpo", *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: stopped after 5 consecutive trials were refused for the same reason: invalid model.eval_tokens="
    ) and errors[0].endswith("must be at least seq_len=256; fix the space or the base configuration"), proc.stderr
    assert "Traceback" not in proc.stderr
    with Journal(run_dir / "journal.sqlite", readonly=True) as journal:
        trials, pending = journal.trials(), journal.pending()
    assert [t.number for t in trials] == list(range(6)) and not pending
    assert trials[0].status == "ok"
    assert json.loads((run_dir / "summary.json").read_text())["trials"] == 6  # what ran is still summarized
    assert all(t.status == "crashed" and t.error.startswith("refused: invalid model.eval_tokens=") for t in trials[1:])
    assert len({t.params["EVAL_TOKENS"] for t in trials[1:]}) > 1  # different values, one reason

    # Run again: it stops again, before proposing anything.
    again = run_cli("jaxhpo", *args)
    assert again.returncode == 2 and "stopped after 5 consecutive trials" in again.stderr, again.stderr[-2000:]
    with Journal(run_dir / "journal.sqlite", readonly=True) as journal:
        assert len(journal.trials()) == 6


def record(number: int, error: str | None, status: str = "crashed") -> TrialRecord:
    return TrialRecord(number=number, params={}, space_id="s", method="random", proposer="random", status=status,
                       val_bpb=None, error=error, wall_seconds=0.0, training_seconds=None, peak_memory_mb=None,
                       started_at=0.0, ended_at=0.0, seed=0)  # fmt: skip


@pytest.mark.parametrize("limit", [0, None, 3])
def test_refusals_stop_a_study_only_when_consecutive_and_for_one_reason(limit):
    head_dim = [record(n, f"refused: invalid model.head_dim={32 * n + 16}: must divide the model width {64 * n}")
                for n in range(1, 4)]  # fmt: skip
    other = record(9, "refused: invalid model.eval_tokens=3: must be at least seq_len=256")
    settings = types.SimpleNamespace(max_consecutive_refusals=limit)
    study = types.SimpleNamespace(cfg=types.SimpleNamespace(study=settings))
    stop = Study._refusal_stop(study, head_dim)
    if limit:
        assert stop == (
            "stopped after 3 consecutive trials were refused for the same reason: invalid model.head_dim=112: must "
            "divide the model width 192; fix the space or the base configuration"
        )
    else:
        assert stop is None  # 0 or null: never stop
    assert Study._refusal_stop(study, [*head_dim[:2], other]) is None  # another reason
    assert Study._refusal_stop(study, [head_dim[0], record(5, "oom", "oom"), *head_dim[1:]]) is None  # not in a row


DUPLICATE_KEY_YAML = """name: dup
params:
  DEPTH: {type: int, key: model.depth, low: 1, high: 4, default: 2}
  DEPTH: {type: int, key: model.depth, low: 1, high: 6, default: 2}
"""
BROKEN_YAML = """name: broken
params: [
  DEPTH: {type: int
"""


@pytest.mark.parametrize("space, extra, line", [
    # a space file of the user's own, its --config-dir given after the overrides (argparse alone refuses that)
    ("dup", [], "invalid YAML: {conf}/space/dup.yaml, line 4: found duplicate key DEPTH (while constructing a mapping)"),
    ("broken", [], "invalid YAML: {conf}/space/broken.yaml, line 4: expected ',' or '}}', but got '<stream end>'"),
    # a key the space sets on every trial: the override would be silently ignored
    ("tiny", ["model.depth=-1"], "model.depth=-1 has no effect: space parameter DEPTH sets model.depth on every trial"),
    ("tiny", ["optim.matrix_lr=0.01"], "optim.matrix_lr=0.01 has no effect: space parameter MATRIX_LR sets"),
])  # fmt: skip
def test_user_files_and_overrides_the_space_ignores_are_one_line(in_process, tmp_path, space, extra, line):
    conf = tmp_path / "conf"
    (conf / "space").mkdir(parents=True)
    (conf / "space" / "dup.yaml").write_text(DUPLICATE_KEY_YAML)
    (conf / "space" / "broken.yaml").write_text(BROKEN_YAML)
    run_dir = tmp_path / "run"
    code, stderr = in_process(["+method=random", f"space={space}", f"hydra.run.dir={run_dir}", *extra,
                               "--config-dir", str(conf)])  # fmt: skip
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"error: {line.format(conf=conf)}"), stderr
    assert not (run_dir / "journal.sqlite").exists()
