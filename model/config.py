"""The trainer's configuration: Hydra structured-config schemas and the checks run before anything compiles."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from hydra.core.config_store import ConfigStore

from model.data import LAYOUTS, MIN_VOCAB_SIZE, PRETOKENIZERS, DataConfig
from model.gpt import MLPS, NORMS, VALUE_EMBEDS, VE_GATE_CHANNELS, WINDOW_LETTERS, GPTConfig, flops_per_token
from model.optim import EMBEDDING_DTYPES, MUON_VARIANTS, OptimConfig

DTYPES = ("auto", "float32", "bfloat16")
# What a run's budget counts. Time is autoresearch's; the others fix the number of optimizer steps before training,
# so that what a run learns does not depend on how busy the machine is.
BUDGETS = ("time", "flops", "tokens", "steps")
# The key that holds the budget of each unit.
BUDGET_KEYS = {"time": "time_budget_s", "flops": "budget_flops", "tokens": "budget_tokens", "steps": "max_steps"}


class ConfigError(ValueError):
    """A configuration the trainer refuses; the message is one line saying what is wrong and how to fix it."""


@dataclass
class ModelConfig(GPTConfig):
    """A model size: the architecture plus the batch shape and evaluation size that suit it."""

    device_batch_size: int = 128  # sequences per micro-step
    total_batch_size: int = 524288  # tokens per optimizer step, reached by gradient accumulation
    eval_tokens: int = 40 * 524288  # held-out tokens scored for val_bpb
    eval_batch_size: int = 128


@dataclass
class TrainConfig:
    """One training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # What ends the run and drives the learning-rate schedule's progress (BUDGETS): time = time_budget_s seconds of
    # training; flops = as many steps as fit in budget_flops training FLOPs (gpt.flops_per_token × tokens, the MFU
    # estimate); tokens = as many steps as fit in budget_tokens; steps = max_steps steps. See `budget_steps`.
    budget: str = "time"
    time_budget_s: float = 300.0  # budget=time: training time, compilation excluded
    budget_flops: Optional[float] = None  # budget=flops
    budget_tokens: Optional[int] = None  # budget=tokens
    # budget=steps. Set under budget=time, it makes the run a steps budget as well (what it always meant: the
    # schedule runs on steps, deterministic, and the run stops there), and time_budget_s no longer stops it.
    max_steps: Optional[int] = None
    seed: int = 0
    compute_dtype: str = "auto"  # auto = bfloat16 on GPU, float32 on CPU
    memory_fraction: float = 0.9  # GPU: share of device memory XLA may take
    # GPU: a share that takes precedence over memory_limit_gb there (the study's 0.543); None = memory_limit_gb's
    # cap, else memory_fraction. memory_limit_gb still caps a CPU run.
    gpu_memory_fraction: Optional[float] = None
    memory_limit_gb: Optional[float] = None  # CPU: address-space limit for this process
    save_checkpoint: bool = True
    log_every_s: float = 10.0  # progress lines when stdout is not a terminal
    preflight: bool = True  # refuse (status oom, predicted) a run XLA's memory analysis says cannot fit
    compile_cache_dir: Optional[str] = None  # persistent XLA compilation cache, shared by runs; None = off
    # Fractions of the budget at which the run scores a quarter of the held-out set and appends the result to
    # rungs.jsonl in its folder, where a study's pruner reads it (jaxhpo.pruners); empty: no rungs.
    rungs: list[float] = field(default_factory=list)


# Settings added after runs were saved, with the value every run saved before them ran with.
KEYS_ADDED = {"optim.muon": "optax", "data.pretokenizer": "bytelevel", "data.layout": "windows",
              "optim.embedding_dtype": "float32",
              # the structural menu: before it, every run was autoresearch's structure
              "model.mlp": "relu2", "model.mlp_ratio": 4.0, "model.value_embeds": "alternate",
              "model.mix_scalars": True, "model.qk_norm": True, "model.softcap": 15.0, "model.rope_base": 10000.0,
              "model.tie_embeddings": False, "model.norm": "pre"}  # fmt: skip
_ABSENT = object()


def load_config(path) -> TrainConfig:
    """A TrainConfig from a YAML file such as a run folder's config.yaml (an older one's missing keys as it ran)."""
    from omegaconf import OmegaConf

    saved = OmegaConf.load(path)
    for key, value in KEYS_ADDED.items():
        if OmegaConf.select(saved, key, default=_ABSENT) is _ABSENT:  # a saved null (softcap off) stays null
            OmegaConf.update(saved, key, value, force_add=True)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), saved))


def grad_accum_steps(m: ModelConfig) -> int:
    """Micro-steps per optimizer step."""
    return m.total_batch_size // (m.device_batch_size * m.seq_len)


def _require(ok: bool, key: str, value, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid {key}={value!r}: {why}")


@dataclass(frozen=True)
class Rule:
    """One field's own range: `ok(value)` says whether a value is in it, `why` how to pick one that is, and
    `bad_example` is a value it refuses (what the tests feed it)."""

    ok: Callable[[Any], bool]
    why: str
    bad_example: Any

    def allows(self, value: Any) -> bool:
        """Whether `value` is in range."""
        try:
            return bool(self.ok(value))
        except TypeError:  # a value of another type (None, a string for a number) is out of range, not a crash
            return False

    def check(self, key: str, value: Any) -> None:
        """Raise a one-line ConfigError naming `key` unless `value` is in range."""
        _require(self.allows(value), key, value, self.why)


def at_least(n: int, why: str | None = None) -> Rule:
    """An integer n or more."""
    return Rule(lambda v: v >= n, why or f"must be at least {n}", n - 1)


def positive(unit: str = "") -> Rule:
    """A number above 0 (in `unit`, e.g. " seconds")."""
    return Rule(lambda v: v > 0, f"must be > 0{unit}", 0)


def non_negative(unit: str = "") -> Rule:
    """A number of at least 0."""
    return Rule(lambda v: v >= 0, f"must be >= 0{unit}", -1)


def interval(low: float, high: float, open_low: bool = False, open_high: bool = False) -> Rule:
    """A number between low and high, each end included unless open."""
    why = f"must be in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    ok = lambda v: (low < v if open_low else low <= v) and (v < high if open_high else v <= high)  # noqa: E731
    return Rule(ok, why, low if open_low else low - 0.5)


def one_of(choices: tuple[str, ...]) -> Rule:
    """One of a fixed set of names."""
    return Rule(lambda v: v in choices, f"choose one of: {', '.join(choices)}", "other")


def optional(rule: Rule, null_means: str) -> Rule:
    """`rule`, or null (None), which means what `null_means` says, e.g. "for no limit"."""
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.why}, or null {null_means}", rule.bad_example)


POSITIVE_INT = at_least(1, "must be a positive integer")
DATA_SOURCES = ("pystdlib", "parquet")
_WIDTH_WHY = f"must be at least {VE_GATE_CHANNELS} (the value-embedding gate reads that many channels)"

# Each field's own range, by its key in TrainConfig. What involves several fields is checked in `validate`; a
# field listed nowhere has no range to keep (a bool, a path, a list of file patterns).
FIELD_RULES: dict[str, Rule] = {
    "model.depth": POSITIVE_INT,
    "model.aspect_ratio": POSITIVE_INT,
    "model.head_dim": Rule(lambda v: v >= 2 and v % 2 == 0,
                           "must be a positive even integer (rotary embeddings rotate pairs of channels)", 3),
    "model.window_pattern": Rule(
        lambda v: len(v) > 0 and set(v.upper()) <= WINDOW_LETTERS,
        "use only the letters S (half-context window) and L (full context), e.g. SSSL", "SXL",
    ),
    "model.seq_len": at_least(2),  # S layers look back seq_len // 2 tokens: at least one
    "model.vocab_size": at_least(MIN_VOCAB_SIZE, f"must be at least {MIN_VOCAB_SIZE} (256 bytes + the specials)"),
    "model.width": optional(at_least(VE_GATE_CHANNELS, _WIDTH_WHY), "for depth × aspect_ratio"),
    "model.mlp": one_of(MLPS),
    "model.mlp_ratio": Rule(lambda v: 0 < v <= 64, "must be in (0, 64]: the MLP's hidden width / model width", 0),
    "model.value_embeds": one_of(VALUE_EMBEDS),
    "model.softcap": optional(positive(), "for no soft cap"),
    "model.rope_base": Rule(lambda v: v > 1, "must be > 1 (the rotary frequencies' base; 10000 is usual)", 1),
    "model.norm": one_of(NORMS),
    "model.device_batch_size": POSITIVE_INT,
    "model.total_batch_size": POSITIVE_INT,
    "model.eval_tokens": POSITIVE_INT,
    "model.eval_batch_size": POSITIVE_INT,
    **{f"optim.{k}": non_negative() for k in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr",
                                               "weight_decay")},  # fmt: skip
    "optim.warmup_ratio": interval(0, 1),
    "optim.warmdown_ratio": interval(0, 1, open_low=True),
    "optim.final_lr_frac": interval(0, 1),
    "optim.muon": one_of(MUON_VARIANTS),
    "optim.embedding_dtype": one_of(EMBEDDING_DTYPES),
    "data.source": one_of(DATA_SOURCES),
    "data.pretokenizer": one_of(PRETOKENIZERS),
    "data.layout": one_of(LAYOUTS),
    "data.text_column": Rule(lambda v: len(v) > 0, "must be a non-empty column name", ""),
    "data.val_fraction": interval(0, 1, open_low=True, open_high=True),  # both splits need text
    "data.max_train_bytes": optional(POSITIVE_INT, "for all the text"),
    "budget": one_of(BUDGETS),
    "time_budget_s": positive(" seconds"),
    "budget_flops": optional(positive(" FLOPs"), "unless budget=flops"),
    "budget_tokens": optional(POSITIVE_INT, "unless budget=tokens"),
    "max_steps": optional(POSITIVE_INT, "to stop on the time budget"),
    "seed": Rule(lambda v: 0 <= v < 2**32, "must be an integer in [0, 2**32)", -1),  # numpy's and JAX's seeds
    "compute_dtype": one_of(DTYPES),
    "memory_fraction": interval(0, 1, open_low=True),
    "gpu_memory_fraction": optional(interval(0, 1, open_low=True), "to let memory_limit_gb (or memory_fraction) decide"),
    "memory_limit_gb": optional(positive(), "for no limit"),
    "rungs": Rule(lambda v: all(0 < f < 1 for f in v) and list(v) == sorted(set(v)),
                  "must be increasing fractions of the budget, each in (0, 1)", [0.5, 0.25]),
    "log_every_s": non_negative(" seconds"),
}


def get_field(cfg: Any, key: str) -> Any:
    """The value at a dotted key of nested dataclasses, e.g. get_field(cfg, "model.depth")."""
    return functools.reduce(getattr, key.split("."), cfg)


def check_fields(cfg: TrainConfig) -> None:
    """Refuse a field outside its own range (FIELD_RULES), with one line naming the key."""
    for key, rule in FIELD_RULES.items():
        rule.check(key, get_field(cfg, key))


def budget_unit(cfg: TrainConfig) -> str:
    """What the run's budget counts: `budget`, but steps when max_steps is set under budget=time."""
    return "steps" if cfg.budget == "time" and cfg.max_steps is not None else cfg.budget


def flops_per_step(m: ModelConfig) -> float:
    """Training FLOPs of one optimizer step, by the trainer's FLOPs-per-token estimate."""
    return flops_per_token(m) * m.total_batch_size


def budget_steps(cfg: TrainConfig) -> Optional[int]:
    """The optimizer steps the budget allows, fixed before training: max_steps, or the most whole steps whose
    tokens or FLOPs fit in the budget; None under a time budget, where the clock decides."""
    unit = budget_unit(cfg)
    if unit == "steps":
        return cfg.max_steps
    # //, not floor(a / b): a quotient just below n that rounds to n would allow a step past the budget.
    if unit == "flops":
        return int(cfg.budget_flops // flops_per_step(cfg.model))
    if unit == "tokens":
        return cfg.budget_tokens // cfg.model.total_batch_size
    return None


def _check_budget(cfg: TrainConfig, names: Mapping[str, str]) -> None:
    unit = budget_unit(cfg)
    key = names.get(BUDGET_KEYS[unit], BUDGET_KEYS[unit])
    value = get_field(cfg, BUDGET_KEYS[unit])
    _require(value is not None, key, value, f"a budget in {unit} needs it; set {key}")
    if unit not in ("flops", "tokens"):
        return
    _require(
        cfg.max_steps is None, names.get("max_steps", "max_steps"), cfg.max_steps,
        f"a budget in {unit} fixes the number of steps; leave it null, or set {names.get('budget', 'budget')}=steps",
    )
    if unit == "flops":
        one_step, fix = f"{flops_per_step(cfg.model):.2g} FLOPs", "use a smaller model"
    else:
        one_step, fix = f"{cfg.model.total_batch_size} tokens", "lower model.total_batch_size"
    why = f"smaller than one step of this configuration ({one_step}); raise it or {fix}"
    _require(budget_steps(cfg) >= 1, key, value, why)


def validate(cfg: TrainConfig, names: Mapping[str, str] | None = None) -> None:
    """Refuse a configuration that cannot train, with one line naming the key and the fix: each field's own range
    first, then the rules between fields. `names` gives the budget keys the names their values were set by (the
    study's trial.*), so that the line names what to change."""
    check_fields(cfg)
    m = cfg.model
    width = m.model_dim
    _require(
        width % m.head_dim == 0, "model.head_dim", m.head_dim,
        f"must divide the model width {width}; pick a divisor or change model.width",
    )
    # depth × aspect_ratio can make a width that is too narrow even when model.width itself is unset
    _require(width >= VE_GATE_CHANNELS, "model.width", width, _WIDTH_WHY)
    micro = m.device_batch_size * m.seq_len
    _require(
        m.total_batch_size >= micro and m.total_batch_size % micro == 0, "model.total_batch_size",
        m.total_batch_size,
        f"must be a multiple of device_batch_size × seq_len = {micro}; try {max(1, m.total_batch_size // micro) * micro}",
    )
    _require(m.eval_tokens >= m.seq_len, "model.eval_tokens", m.eval_tokens, f"must be at least seq_len={m.seq_len}")
    _check_budget(cfg, names or {})  # after the shape checks: a step's FLOPs need a valid shape


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
