"""The study's own prompts (`protocol=paper`): Centaur's and the LLM agent's, as the 2026 study built them.

The study is github.com/ferreirafabio/autoresearch-automl (commit 150cd14); its Centaur prompt comes from
autoresearch_automl/backends/centaur_backend.py and its agent prompt (the `karpathy_agent_hps` backend) from
autoresearch_automl/backends/karpathy_agent_hps_backend.py. Everything here must return exactly the text, reply
parsing and value handling the study's code does, character for character, so that a run under this protocol
shows an LLM the very prompts of the paper; jaxhpo's own prompts (jaxhpo.llm.prompt) are free to differ. The
study describes its space with ConfigSpace (1.2.2 in its uv.lock), so that is used here too: its reprs and its
hyperparameter order (alphabetical) are part of the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from ConfigSpace import Categorical, ConfigurationSpace, Float, Integer
from ConfigSpace.hyperparameters import UniformFloatHyperparameter, UniformIntegerHyperparameter

from jaxhpo.space import Space

RECENT = 20  # the study's "last 20" evaluations in the history
DEFAULT_VRAM = "~120GB"  # the study's value when AVAILABLE_VRAM is unset

# Quoted from centaur_backend.py (SUGGEST_PROMPT).
CENTAUR_PROMPT = """\
You are optimizing hyperparameters for a GPT-2 scale transformer trained on climbmix-400b-shuffle.
Goal: minimize val_bpb. GPU: H200 with {available_vram} available.

Search space:
{space_description}

{cma_analysis}

Previous evaluations (last 20):
{history}

{incumbent_info}

Use CMA-ES's analysis as guidance:
- If CMA-ES is converging (low sigma), exploit near its mean
- If sigma is large, CMA-ES is still exploring — help by using your transformer knowledge
- You can diverge from CMA-ES if you see patterns it might miss (e.g., OOM-prone regions, known good ratios)

Respond ONLY with a valid JSON object mapping HP names to values."""

# Quoted from karpathy_agent_hps_backend.py (SUGGEST_PROMPT). The backslash after "vLLM) " only wraps the source
# line at 120 characters: in the original, "Training runs ... large HEAD_DIM," is one line.
AGENT_PROMPT = """\
You are optimizing hyperparameters for a GPT-2 scale transformer trained on climbmix-400b-shuffle.
The goal is to minimize val_bpb (validation bits-per-byte).
Training runs on a single H200 GPU (141GB VRAM, {available_vram} available after vLLM) \
— configs with very high DEPTH, large HEAD_DIM,
or large DEVICE_BATCH_SIZE may cause OOM (out of memory) crashes.

Current search space with bounds:
{space_description}

Previous evaluations (config → result):
{history}

{incumbent_info}

Suggest the next configuration to try. Learn from both successful runs AND failures (OOM crashes
mean the model was too large for the GPU). Respond with a JSON object mapping HP names to values.
Only include HPs from the search space. Be creative but principled — consider what you know
about transformer training dynamics.

Respond ONLY with a valid JSON object, no explanation."""


@dataclass(frozen=True)
class PaperRow:
    """One evaluation as the study's history holds it: the configuration, its val_bpb, or why it failed."""

    config: dict
    val_bpb: float | None = None
    error: str | None = None


def configuration_space(space: Space) -> ConfigurationSpace:
    """The space as the study's ConfigurationSpace; iterating it gives the study's (alphabetical) order."""
    cs = ConfigurationSpace()
    for p in space.params:
        if p.type == "int":
            cs.add(Integer(p.name, bounds=(int(p.low), int(p.high)), default=int(p.default), log=p.log))
        elif p.type == "float":
            # float() so that a default written as 0 in YAML still prints as the study's "Default: 0.0"
            cs.add(Float(p.name, bounds=(float(p.low), float(p.high)), default=float(p.default), log=p.log))
        else:
            cs.add(Categorical(p.name, items=list(p.choices), default=p.default))
    return cs


def space_description(space: Space) -> str:
    """The study's `_format_space`: "  NAME: <ConfigSpace repr>" per parameter, in ConfigSpace's order."""
    return "\n".join(f"  {hp.name}: {hp}" for hp in configuration_space(space).values())


def _native(config: Mapping) -> dict:
    """The study's `_to_native_types`: numpy scalars -> Python values, so json.dumps accepts them."""
    native = {}
    for k, v in config.items():
        if isinstance(v, np.integer):
            native[k] = int(v)
        elif isinstance(v, np.floating):
            native[k] = float(v)
        elif isinstance(v, (np.str_, np.bytes_)):
            native[k] = str(v)
        else:
            native[k] = v
    return native


def history(rows: Sequence[PaperRow]) -> str:
    """The study's `_format_history`: one line per evaluation, the last 20; "" when there are none."""
    lines = []
    for row in rows[-RECENT:]:
        config = json.dumps(_native(row.config))
        if row.val_bpb is not None:
            lines.append(f"  {config} → val_bpb={row.val_bpb}")
        elif row.error:  # the study tests truthiness: an empty reason reads FAILED
            lines.append(f"  {config} → CRASHED ({row.error})")
        else:
            lines.append(f"  {config} → FAILED")
    return "\n".join(lines)


def _best(rows: Sequence[PaperRow]) -> PaperRow:
    # min() keeps the first of equal keys: with no val_bpb at all the study shows its first row
    return min(rows, key=lambda r: r.val_bpb if r.val_bpb is not None else float("inf"))


def _best_value(row: PaperRow) -> Any:
    return row.val_bpb if row.val_bpb is not None else "?"


def incumbent(rows: Sequence[PaperRow]) -> str:
    """The study's `_format_incumbent` (Centaur): the lowest val_bpb and its configuration; "" when no rows."""
    if not rows:
        return ""
    best = _best(rows)
    return f"Current best config (val_bpb={_best_value(best)}):\n{json.dumps(_native(best.config), indent=2)}"


def cma_analysis(state: Mapping | None, suggestion: Mapping) -> str:
    """The study's `_format_cma_analysis`: CMA-ES's next suggestion and, once it has state, its sigma, best
    trials and covariance matrix.

    `state` is None while CMA-ES has no optimizer yet, else {"n_trials", "sigma", "top": [(params, value)] (the
    best first, at most 5), "cov": the covariance matrix or None, "cov_names": its rows' parameter names}.
    """
    suggested = json.dumps(_native(suggestion), indent=2)
    # The texts below are quoted from centaur_backend.py (_format_cma_analysis).
    if state is None:
        return (
            "## CMA-ES Advisor\n"
            "CMA-ES is still initializing (not enough trials for covariance estimation).\n\n"
            f"CMA-ES's next suggestion: {suggested}"
        )
    lines = [
        "## CMA-ES Advisor Analysis",
        f"CMA-ES has run {state['n_trials']} trials (sigma={state['sigma']:.4f}, smaller=more focused).",
        f"\nCMA-ES's next suggestion: {suggested}",
    ]
    if state["top"]:
        lines.append("\nTop 5 configs found by CMA-ES:")  # the study says "Top 5" however many there are
        for i, (params, value) in enumerate(state["top"], 1):
            lines.append(f"  {i}. val_bpb={value:.4f}: {json.dumps(_native(params))}")
    if state.get("cov") is not None:
        names = list(state["cov_names"])
        C = np.array(state["cov"])
        # the study drops the matrix silently when the names do not match its size
        if len(names) == C.shape[0]:
            lines.append(
                f"\nCMA-ES covariance matrix ({C.shape[0]}x{C.shape[0]}). "
                "This matrix describes how the hyperparameters co-vary in the learned search distribution. "
                "Positive off-diagonal entries mean those HPs tend to increase together in good regions; "
                "negative entries mean they trade off. "
                f"Row/column order: {', '.join(f'{i}={name}' for i, name in enumerate(names))}."
            )
            lines.append(np.array2string(C, precision=4, suppress_small=True))
    return "\n".join(lines)


def centaur_prompt(space: Space, state: Mapping | None, suggestion: Mapping, rows: Sequence[PaperRow],
                   vram: str = DEFAULT_VRAM) -> str:  # fmt: skip
    """Centaur's prompt, filled as the study's `CentaurBackend._suggest_llm` fills it."""
    return CENTAUR_PROMPT.format(
        space_description=space_description(space),
        cma_analysis=cma_analysis(state, suggestion),
        history=history(rows) or "(no evaluations yet)",
        incumbent_info=incumbent(rows),
        available_vram=vram,
    )


def agent_prompt(space: Space, rows: Sequence[PaperRow], vram: str = DEFAULT_VRAM) -> str:
    """The agent's prompt, filled as the study's `KarpathyAgentHPSBackend.suggest` fills it."""
    incumbent_info = ""
    if rows:
        best = _best(rows)
        # unlike Centaur's, the agent's incumbent skips the numpy -> Python conversion (the same text otherwise)
        incumbent_info = f"Current best config (val_bpb={_best_value(best)}):\n{json.dumps(best.config, indent=2)}"
    return AGENT_PROMPT.format(
        space_description=space_description(space),
        history=history(rows) or "(no evaluations yet)",
        incumbent_info=incumbent_info,
        available_vram=vram,
    )


def parse_reply(text: str) -> dict:
    """The study's reading of a reply: the text after the first code fence (less a leading "json"), else the
    whole reply, as JSON. ValueError if that is not JSON or not an object."""
    if "```" in text:
        text = text.split("```")[1]
        if text.startswith("json"):
            text = text[4:]
        text = text.strip()
    config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"the reply's JSON is a {type(config).__name__}, not an object")
    return config


def clamp(space: Space, config: Mapping) -> dict:
    """The study's `_clamp_to_space`: every parameter in ConfigSpace's order, missing ones defaulted, numbers
    cast to the default's type (int() truncates) and clipped to the bounds; categories pass unchecked. A value
    that does not cast raises, as in the study."""
    clamped = {}
    for hp in configuration_space(space).values():
        if hp.name not in config:
            clamped[hp.name] = hp.default_value
            continue
        val = config[hp.name]
        if isinstance(hp, (UniformIntegerHyperparameter, UniformFloatHyperparameter)):
            val = type(hp.default_value)(val)
            # this order of max/min is the study's: a NaN float ends up at the upper bound
            val = max(hp.lower, min(hp.upper, val))
        clamped[hp.name] = val
    return clamped


def snap_pow2(space: Space, config: Mapping, seq_len: int | None) -> dict:
    """The study's `snap_to_power_of_2`: power-of-two parameters to the nearest power of two (ties to the lower;
    bounds not checked), then TOTAL_BATCH_SIZE raised to DEVICE_BATCH_SIZE * seq_len if below it (the study
    hard-codes seq_len = 2048; None leaves that rule to the trainer, whose repair of total_batch_size is the same
    for powers of two)."""
    result = dict(config)
    for p in space.params:
        if p.pow2 and p.name in result and isinstance(result[p.name], (int, float)):
            v = max(1, int(result[p.name]))
            low = 1 << (v.bit_length() - 1)
            high = low << 1
            result[p.name] = low if (v - low) <= (high - v) else high
    if seq_len is not None and "DEVICE_BATCH_SIZE" in space.names and "TOTAL_BATCH_SIZE" in space.names:
        dbs, tbs = result.get("DEVICE_BATCH_SIZE"), result.get("TOTAL_BATCH_SIZE")
        if isinstance(dbs, int) and isinstance(tbs, int) and tbs < dbs * seq_len:
            result["TOTAL_BATCH_SIZE"] = dbs * seq_len
    return result
