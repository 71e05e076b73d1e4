"""The trainer's configuration: Hydra structured-config schemas and the checks run before anything compiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from model.data import DataConfig
from model.gpt import VE_GATE_CHANNELS, WINDOW_LETTERS, GPTConfig
from model.optim import OptimConfig

DTYPES = ("auto", "float32", "bfloat16")


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
    time_budget_s: float = 300.0  # training time, compilation excluded
    max_steps: Optional[int] = None  # if set, the schedule runs on steps (deterministic) and stops there
    seed: int = 0
    compute_dtype: str = "auto"  # auto = bfloat16 on GPU, float32 on CPU
    memory_fraction: float = 0.9  # GPU: share of device memory XLA may take
    memory_limit_gb: Optional[float] = None  # CPU: address-space limit for this process
    save_checkpoint: bool = True
    log_every_s: float = 10.0  # progress lines when stdout is not a terminal
    preflight: bool = True  # refuse (status oom, predicted) a run XLA's memory analysis says cannot fit
    compile_cache_dir: Optional[str] = None  # persistent XLA compilation cache, shared by runs; None = off


def load_config(path) -> TrainConfig:
    """A TrainConfig from a YAML file such as a run folder's config.yaml."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path)))


def grad_accum_steps(m: ModelConfig) -> int:
    """Micro-steps per optimizer step."""
    return m.total_batch_size // (m.device_batch_size * m.seq_len)


def _require(ok: bool, key: str, value, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid {key}={value!r}: {why}")


def validate(cfg: TrainConfig) -> None:
    """Refuse a configuration that cannot train, with one line naming the key and the fix."""
    m, o = cfg.model, cfg.optim
    for key in ("depth", "aspect_ratio", "head_dim", "seq_len", "device_batch_size", "eval_batch_size"):
        _require(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "must be a positive integer")
    _require(m.head_dim % 2 == 0, "model.head_dim", m.head_dim, "rotary embeddings need an even head width")
    width = m.model_dim
    _require(
        width % m.head_dim == 0, "model.head_dim", m.head_dim,
        f"must divide the model width {width}; pick a divisor or change model.width",
    )
    _require(width >= VE_GATE_CHANNELS, "model.width", width, f"must be at least {VE_GATE_CHANNELS}")
    pattern = m.window_pattern
    _require(
        len(pattern) > 0 and set(pattern.upper()) <= WINDOW_LETTERS, "model.window_pattern", pattern,
        "use only the letters S (half-context window) and L (full context), e.g. SSSL",
    )
    _require(m.seq_len >= 2, "model.seq_len", m.seq_len, "must be at least 2")
    _require(m.vocab_size >= 260, "model.vocab_size", m.vocab_size, "must be at least 260 (256 bytes + 4 specials)")
    micro = m.device_batch_size * m.seq_len
    _require(
        m.total_batch_size >= micro and m.total_batch_size % micro == 0, "model.total_batch_size",
        m.total_batch_size,
        f"must be a multiple of device_batch_size × seq_len = {micro}; try {max(1, m.total_batch_size // micro) * micro}",
    )
    _require(m.eval_tokens >= m.seq_len, "model.eval_tokens", m.eval_tokens, f"must be at least seq_len={m.seq_len}")
    for key in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "weight_decay"):
        _require(getattr(o, key) >= 0, f"optim.{key}", getattr(o, key), "must be >= 0")
    for key in ("warmup_ratio", "final_lr_frac"):
        _require(0 <= getattr(o, key) <= 1, f"optim.{key}", getattr(o, key), "must be in [0, 1]")
    _require(0 < o.warmdown_ratio <= 1, "optim.warmdown_ratio", o.warmdown_ratio, "must be in (0, 1]")
    _require(cfg.time_budget_s > 0, "time_budget_s", cfg.time_budget_s, "must be > 0 seconds")
    _require(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", cfg.max_steps, "must be >= 1 or null")
    _require(cfg.compute_dtype in DTYPES, "compute_dtype", cfg.compute_dtype, f"choose one of {', '.join(DTYPES)}")
    _require(0 < cfg.memory_fraction <= 1, "memory_fraction", cfg.memory_fraction, "must be in (0, 1]")
    _require(
        cfg.memory_limit_gb is None or cfg.memory_limit_gb > 0, "memory_limit_gb", cfg.memory_limit_gb,
        "must be > 0 or null",
    )


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
