"""LLAMBO's two prompts and how their replies are read, in the format of the study's "LLAMBO (Paper)" backend
(LLAMBO, Liu et al. 2024, as `llambo_original` ran it): configurations written `## NAME: value, NAME: value ##`,
scores `## 1.234567 ##`, few-shot examples of every observation in one fixed shuffled order.

The candidate sampler is shown the observations as (performance, configuration) pairs ending in the target
performance and an empty configuration to complete; the surrogate is shown (configuration, performance) pairs
ending in one candidate and an empty performance. Each float is written with as many decimals as its range's lower
bound has (at least 2), scores with 6, as the study did. Where jaxhpo departs, it says so in `LLAMBOProposer`'s
docstring (categories by name, failures named, a prompt budget).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, Mapping, Sequence

import numpy as np

from jaxhpo.llm.prompt import estimate_tokens
from jaxhpo.objective import VAL_BPB, Objective
from jaxhpo.space import Param, Space

SYSTEM = "You are an AI assistant that helps people find information."  # the study's, for both prompts
_BLOCK = re.compile(r"##(.*?)##", re.S)
_SCORE = re.compile(r"##\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*##")


def decimals(p: Param) -> int:
    """How many decimals a float parameter is written with: as many as its lower bound has, at least 2."""
    exponent = Decimal(repr(float(p.low))).normalize().as_tuple().exponent
    return max(2, -int(exponent)) if isinstance(exponent, int) else 2


def fmt(p: Param, value: Any) -> str:
    if p.type == "float":
        return f"{float(value):.{decimals(p)}f}"
    return str(value)


def fmt_config(space: Space, params: Mapping, sep: str = ": ") -> str:
    return ", ".join(f"{p.name}{sep}{fmt(p, params[p.name])}" for p in space.params)


def describe(space: Space) -> str:
    lines = []
    for p in space.params:
        if p.type == "categorical":
            lines.append(f"- {p.name}: one of {', '.join(p.choices)}")
        elif p.type == "int":
            lines.append(f"- {p.name}: [{p.low}, {p.high}] (int{', a power of two' if p.pow2 else ''})")
        else:
            lines.append(f"- {p.name}: [{fmt(p, p.low)}, {fmt(p, p.high)}] (float, precise to {decimals(p)} decimals)")
    return "\n".join(lines)


def task(space: Space, objective: Objective = VAL_BPB) -> str:
    if objective == VAL_BPB:  # the study's words
        goal = ("The task: tune a small GPT language model, trained for a fixed budget, to minimize val_bpb "
                "(validation bits per byte): lower is better.")  # fmt: skip
    else:
        goal = f"The task: {objective.reports()}"
    return f"{goal} Large models and batches can run out of memory. Hyperparameters: {', '.join(space.names)}."


def shuffled(n: int) -> np.ndarray:
    """The examples' order: one fixed permutation per history length, the same for both prompts (the study's)."""
    return np.random.RandomState(0).permutation(n)


def _messages(space: Space, parts: Sequence[str], objective: Objective) -> list[dict]:
    """The study's system message, and the task followed by `parts` as the user message."""
    user = "\n\n".join([task(space, objective), *parts])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _fitted(build, n: int, max_tokens: int) -> list[dict]:
    """build(k) with the most examples k <= n whose messages fit `max_tokens` estimated tokens."""
    k = n
    messages = build(k)
    while k > 1 and estimate_tokens(messages) > max_tokens:
        k = max(1, int(k * 0.8))
        messages = build(k)
    return messages


def sampler_prompt(space: Space, observed: Sequence[tuple[Mapping, float, str | None]], target: float,
                   max_tokens: int, objective: Objective = VAL_BPB) -> list[dict]:  # fmt: skip
    """Ask for a configuration expected to reach `target`. `observed`: (params, score, failure or None), in the
    order to show (already shuffled); a failure's score is its penalty, and its reason is named. Scores are
    minimized values, shown as the metric's own."""

    def build(k: int) -> list[dict]:
        rows = []
        for params, score, failure in observed[:k]:
            note = f" (failed: {failure}; scored as the worst success + 0.5)" if failure else ""
            rows.append(f"Performance: {objective.show(score, '.6f')}{note}\n"
                        f"Hyperparameter configuration: ## {fmt_config(space, params)} ##")
        return _messages(space, [
            f"The following are examples of performance of a GPT model measured in {objective.metric} and the "
            "corresponding model hyperparameter configurations. The allowable ranges for the hyperparameters "
            "are:\n" + describe(space),
            f"Recommend a configuration that can achieve the target performance of {objective.show(target, '.6f')}. "
            "Do not recommend "
            "values at the minimum or maximum of allowable range, do not recommend rounded values. Recommend values "
            "with highest possible precision, as requested by the allowed ranges. Your response must only contain "
            "the predicted configuration, in the format ## configuration ##.",
            *rows,
            f"Performance: {objective.show(target, '.6f')}\nHyperparameter configuration:",
        ], objective)  # fmt: skip

    return _fitted(build, len(observed), max_tokens)


def scorer_prompt(space: Space, observed: Sequence[tuple[Mapping, float, str | None]], candidate: Mapping,
                  max_tokens: int, objective: Objective = VAL_BPB) -> list[dict]:  # fmt: skip
    """Ask for the metric's value `candidate` would reach, from (configuration, performance) examples."""

    def build(k: int) -> list[dict]:
        rows = [f"Hyperparameter configuration: {fmt_config(space, params, ' is ')}\n"
                f"Performance: ## {objective.show(score, '.6f')} ##" for params, score, _ in observed[:k]]  # fmt: skip
        return _messages(space, [
            "The following are hyperparameter configurations for a GPT model and the corresponding performance "
            f"measured in {objective.metric}. Your response should only contain the predicted {objective.metric} in "
            "the format ## performance ##.",
            *rows,
            f"Hyperparameter configuration: {fmt_config(space, candidate, ' is ')}\nPerformance: ",
        ], objective)  # fmt: skip

    return _fitted(build, len(observed), max_tokens)


def parse_candidate(text: str, space: Space) -> dict | None:
    """The configuration between the reply's first pair of ##, if it names every parameter with a valid value
    (in range, an integer where one is needed, a known category); None otherwise (the study's checks)."""
    m = _BLOCK.search(text or "")
    if m is None:
        return None
    given: dict[str, str] = {}
    for part in m.group(1).split(","):
        name, _, value = part.partition(":")
        given[name.strip()] = value.strip()
    if set(given) != set(space.names):
        return None
    out: dict[str, Any] = {}
    for p in space.params:
        raw = given[p.name]
        if p.type == "categorical":
            if raw not in p.choices:
                return None
            out[p.name] = raw
            continue
        try:
            x = float(raw)
        except ValueError:
            return None
        if not math.isfinite(x) or not p.low <= x <= p.high:
            return None
        if p.type == "int":
            if not x.is_integer():
                return None
            x = p.clamp(int(x))  # a power of two's range takes any integer, snapped, as the study's runner did
        out[p.name] = x
    return out


def parse_score(text: str) -> float:
    """The one `## number ##` in a scorer reply; NaN when there is none, or more than one (the study's rule)."""
    found = _SCORE.findall(text or "")
    return float(found[0]) if len(found) == 1 else float("nan")
