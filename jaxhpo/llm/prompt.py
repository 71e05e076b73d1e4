"""What an LLM is shown and how its reply is read: the JSON schema of one configuration, the prompts of the two
LLM methods, and a defensive parser that turns whatever came back into a valid configuration.

Prompts are plain text a small model can follow (the embedded SmolLM2-135M has an 8k context): one line per
search-space parameter, one table row per trial, the configurations to copy from (the best so far, CMA-ES's
suggestion) as JSON, and the instruction "Reply with JSON only." last. What never changes within a study (the
system message, the goal, the space, the rules) comes first, so a server that caches the previous prompt's prefix
(llama.cpp does) reads only the rest anew. They are kept under `max_tokens` estimated tokens (`estimate_tokens`:
digits count one each, as SmolLM2's and Qwen's tokenizers split numbers into digits) by showing fewer of the
recent evaluations. Sizes with SmolLM2's tokenizer, 14 parameters, 200 trials of history: Centaur ~5.7k tokens,
llm ~3.9k; in the worst case (every value printed at its longest, all 25 rows failed with long reasons) Centaur is
6.3k (6.9k estimated). The budget, 7,200 estimated tokens, holds the study's 20 evaluations in either case, and
with the 400-token reply stays inside SmolLM2's 8k context. On a 2-core CPU SmolLM2 reads 30-200 tokens/s, so a
full Centaur turn takes about 0.5-3 minutes there.

`parse_reply` never trusts the reply: it takes the first JSON object out of prose or code fences, matches
parameter names case-insensitively, reads numbers given as strings, fills missing parameters from a fallback
configuration, clips values to the bounds, rounds integers, snaps powers of two, replaces unknown categories, and
notes every change in one line. Only a reply with no usable JSON object at all raises `ReplyError`; the proposer
then falls back to its classical proposal.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxhpo.journal import TrialRecord
from jaxhpo.objective import VAL_BPB, Objective
from jaxhpo.space import Param, Space

RECENT = 20  # evaluations shown at least (the original's "last 20"), up to RECENT // 2 - 1 more: see _window_start
TOP = 5  # best trials shown in Centaur's prompt
MAX_PROMPT_TOKENS = 7200  # estimated; a local server's context lowers it (see proposers.llm.prompt_budget)
CHARS_PER_TOKEN = 1.9  # non-digit characters per token in these prompts, for SmolLM2's tokenizer (measured)
REPLY_INSTRUCTION = "Reply with JSON only."
ERROR_CHARS = 60  # a failure reason is cut to this many characters (25 rows of them must fit the prompt)


class ReplyError(ValueError):
    """An LLM reply that holds no usable configuration; the message is one line."""


# -- the schema ----------------------------------------------------------------------------------------------------


def param_schema(p: Param) -> dict:
    """The JSON schema of one parameter's values (grammars enforce types and enums, not always the bounds)."""
    if p.type == "categorical":
        return {"type": "string", "enum": list(p.choices)}
    if p.type == "int" and p.pow2:
        return {"type": "integer", "enum": list(p.levels)}
    return {"type": "integer" if p.type == "int" else "number", "minimum": p.low, "maximum": p.high}


def json_schema(space: Space) -> dict:
    """The JSON schema of one configuration: an object with every parameter, nothing else."""
    return {
        "type": "object",
        "properties": {p.name: param_schema(p) for p in space.params},
        "required": list(space.names),
        "additionalProperties": False,
    }


# -- parsing -------------------------------------------------------------------------------------------------------


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)(?:```|$)", re.S)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _lenient(s: str) -> tuple[Any, str] | None:
    """Common small-model JSON mistakes, repaired: trailing commas, Python literals, single quotes, a reply cut
    short (closed after its last complete member). Returns (value, what was repaired) or None."""
    fixes = []
    t = re.sub(r",\s*([}\]])", r"\1", s)
    if t != s:
        fixes.append("trailing comma")
    u = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", t)))
    if u != t:
        fixes.append("Python literals")
    if '"' not in u and "'" in u:
        u = u.replace("'", '"')
        fixes.append("single quotes")
    dec = json.JSONDecoder()
    try:
        return dec.raw_decode(u)[0], ", ".join(fixes)
    except ValueError:
        pass
    # cut short (max_tokens): keep the members before the last comma that gives valid JSON when closed
    cuts = [m.start() for m in re.finditer(",", u)][::-1][:40]
    for cut in cuts:
        try:
            value = json.loads(u[:cut] + "}")
        except ValueError:
            continue
        return value, ", ".join(fixes + ["reply cut short: kept its complete members"])
    return None


def extract_object(text: str) -> tuple[dict, list[str]]:
    """The first JSON object in `text` (prose and code fences around it ignored), and notes on what had to be
    repaired to read it. ReplyError if there is none or the first JSON value is not an object."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyError("empty reply")
    t = text.strip()
    notes: list[str] = []
    candidates = [t] + [m.group(1).strip() for m in _FENCE.finditer(t)]
    value: Any = None
    found = False
    for c in candidates:  # the whole reply, or a fenced block, is JSON
        try:
            value, found = json.loads(c), True
            break
        except ValueError:
            continue
    if not found:  # prose around it: the first "{" that starts a JSON value
        value, found = _first_json_value(t, "{")
    if not found and "{" in t:
        fixed = _lenient(t[t.index("{"):])
        if fixed is not None:
            value, what = fixed
            found = True
            notes.append(f"reply JSON repaired ({what})" if what else "reply JSON repaired")
    if not found:  # a list in prose is still "not an object"
        value, found = _first_json_value(t, "[")
    if not found:
        raise ReplyError(f"no JSON object in the reply: {_short(t)!r}")
    if isinstance(value, list):
        raise ReplyError(f"the reply's JSON is a list, not an object: {_short(t)!r}")
    if not isinstance(value, dict):
        raise ReplyError(f"the reply's JSON is a {type(value).__name__}, not an object: {_short(t)!r}")
    return value, notes


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _as_number(raw: Any) -> tuple[float | None, str | None]:
    """(number, note) for a reply value; (None, None) if it is not one."""
    if isinstance(raw, bool) or raw is None:
        return None, None
    if isinstance(raw, (int, float)):
        return (float(raw) if isinstance(raw, float) else raw), None
    if isinstance(raw, str):
        s = raw.strip().replace("_", "")
        try:
            x = float(s)
            x = int(x) if re.fullmatch(r"[-+]?\d+", s) else x
            return x, f"read {raw!r} as {x!r}"
        except ValueError:
            m = _NUMBER.search(s)
            if m:
                x = float(m.group())
                return x, f"read {raw!r} as {x!r}"
    return None, None


def _fmt_bounds(p: Param) -> str:
    return f"[{fmt_value(p.low)}, {fmt_value(p.high)}]"


def _first_json_value(text: str, opener: str) -> tuple[Any, bool]:
    """The JSON value that starts at the first `opener` from which one decodes, and whether there was one."""
    decoder = json.JSONDecoder()
    for i in (i for i, ch in enumerate(text) if ch == opener):
        try:
            return decoder.raw_decode(text, i)[0], True
        except ValueError:
            continue
    return None, False


def parse_reply(text: str, space: Space, fallback: Mapping | None = None,
                fallback_label: str | None = None) -> tuple[dict, list[str]]:  # fmt: skip
    """A valid configuration from an LLM reply, and one note per repair.

    Parameters are matched case-insensitively (ignoring `_`, `-` and spaces); unknown ones are dropped; missing
    ones, non-numbers and unknown categories take their value from `fallback` (e.g. CMA-ES's suggestion or the
    best configuration so far; the space's default if None); numbers are clipped to the bounds, rounded to
    integers and snapped to powers of two. ReplyError (one line) when there is no JSON object, or when it names
    none of the space's parameters.
    """
    obj, repairs = extract_object(text)
    params, more = config_from_object(obj, space, fallback, fallback_label)
    return params, repairs + more


def config_from_object(obj: dict, space: Space, fallback: Mapping | None = None,
                       fallback_label: str | None = None) -> tuple[dict, list[str]]:  # fmt: skip
    """A valid configuration from one JSON object of a reply, and one note per repair (`parse_reply`'s rules)."""
    repairs: list[str] = []
    if fallback is not None:
        fb, _ = space.clamp(fallback)
        label = fallback_label or "the fallback configuration"
    else:
        fb, label = space.default(), "the default"
    by_norm = {_norm(n): n for n in space.names}

    def matched(d: dict) -> int:
        return sum(_norm(k) in by_norm for k in d)

    if not matched(obj):  # {"config": {...}}: a small model's wrapper around the answer
        inner = [(k, v) for k, v in obj.items() if isinstance(v, dict) and matched(v)]
        if len(inner) == 1:
            repairs.append(f"unwrapped the configuration from key {inner[0][0]!r}")
            obj = inner[0][1]
    if not matched(obj):
        keys = ", ".join(map(str, list(obj)[:6])) or "none"
        raise ReplyError(f"the reply names none of the space's parameters (its keys: {_short(keys, 100)})")

    given: dict[str, Any] = {}
    for key, raw in obj.items():
        name = by_norm.get(_norm(key))
        if name is None:
            repairs.append(f"dropped unknown parameter {_short(str(key), 40)!r}")
        elif name in given:
            repairs.append(f"{name}: ignored a second value {_short(repr(raw), 40)} (key {_short(repr(key), 40)})")
        else:
            if key != name:
                repairs.append(f"{name}: read from key {_short(repr(key), 40)}")
            given[name] = raw

    out: dict[str, Any] = {}
    for p in space.params:
        if p.name not in given:
            out[p.name] = fb[p.name]
            repairs.append(f"{p.name} missing: used {fb[p.name]!r} from {label}")
            continue
        raw = given[p.name]
        if p.type == "categorical":
            if raw in p.choices:
                out[p.name] = raw
                continue
            hit = [c for c in p.choices if isinstance(raw, (str, int, float)) and not isinstance(raw, bool)
                   and str(c).lower() == str(raw).strip().lower()]  # fmt: skip
            if hit:
                out[p.name] = hit[0]
                repairs.append(f"{p.name}: {raw!r} -> {hit[0]!r}")
            else:
                out[p.name] = fb[p.name]
                repairs.append(f"{p.name}: unknown choice {_short(repr(raw), 40)}: used {fb[p.name]!r} from {label}")
            continue
        x, note = _as_number(raw)
        if x is None or not math.isfinite(x):
            out[p.name] = fb[p.name]
            repairs.append(f"{p.name}: {_short(repr(raw), 40)} is not a number: used {fb[p.name]!r} from {label}")
            continue
        if note:
            repairs.append(f"{p.name}: {note}")
        value = p.clamp(x)
        if value != x:
            if not p.low <= x <= p.high:
                why = f"outside {_fmt_bounds(p)}"
            elif p.pow2:
                why = "snapped to a power of two"
            else:
                why = "rounded to an integer"
            repairs.append(f"{p.name}: {x!r} -> {value!r} ({why})")
        out[p.name] = value
    space.check(out)
    return out, repairs


def parse_configs(text: str, space: Space, k: int) -> tuple[list[dict], list[str]]:
    """Up to `k` valid configurations from a reply that lists several (a JSON array of objects, or an object holding
    one, such as {"configurations": [...]}), each read by `config_from_object` with the default as fallback, and
    one note per repair ("configuration 2: ..."). A reply cut short keeps its complete objects; an object that
    names no parameter is dropped with a note. ReplyError (one line) when no configuration is usable."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyError("empty reply")
    objects = _listed_objects(text.strip())
    configs: list[dict] = []
    repairs: list[str] = []
    for i, obj in enumerate(objects, start=1):
        if len(configs) == k:
            repairs.append(f"ignored {len(objects) - i + 1} configuration(s) beyond the {k} asked for")
            break
        try:
            params, notes = config_from_object(obj, space)
        except ReplyError as e:
            repairs.append(f"configuration {i} dropped: {e}")
            continue
        configs.append(params)
        repairs += [f"configuration {i}: {note}" for note in notes]
    if not configs:
        raise ReplyError(f"no usable configuration in the reply: {_short(text)!r}")
    return configs, repairs


def _listed_objects(t: str) -> list[dict]:
    """The JSON objects a reply lists; when its JSON does not decode (cut short at max_tokens), every complete
    top-level object in it."""
    value, found = None, False
    for c in [t] + [m.group(1).strip() for m in _FENCE.finditer(t)]:
        try:
            value, found = json.loads(c), True
            break
        except ValueError:
            continue
    if not found:
        value, found = _first_json_value(t, "[")
    if found and isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list) and any(isinstance(x, dict) for x in v)]
        value = lists[0] if lists else [value]
    if found and isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    objects, decoder, i = [], json.JSONDecoder(), t.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(t, i)
        except ValueError:
            i = t.find("{", i + 1)
            continue
        if isinstance(value, dict):
            objects.append(value)
        i = t.find("{", end)
    return objects


# -- formatting ------------------------------------------------------------------------------------------------------


def fmt_value(v: Any) -> str:
    """Compact: ints as they are, floats to 3 significant digits, strings bare."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v == 0:
            return "0"
        s = f"{v:.3g}"
        return s
    return str(v)


def fmt_config(params: Mapping, space: Space) -> str:
    """A configuration as one line of JSON, in the space's order, floats to 3 significant digits."""
    parts = []
    for n in space.names:
        if n not in params:
            continue
        v = params[n]
        parts.append(f'"{n}": {json.dumps(v) if isinstance(v, str) else fmt_value(v)}')
    return "{" + ", ".join(parts) + "}"


def describe_param(p: Param) -> str:
    default = fmt_value(p.default)
    if p.type == "categorical":
        return f"- {p.name}: one of {', '.join(p.choices)}; default {default}"
    if p.type == "int" and p.pow2:
        return f"- {p.name}: integer, a power of two: {', '.join(map(str, p.levels))}; default {default}"
    kind = "integer" if p.type == "int" else "number"
    scale = " (log scale)" if p.log else ""
    return f"- {p.name}: {kind} from {fmt_value(p.low)} to {fmt_value(p.high)}{scale}; default {default}"


def describe_space(space: Space) -> str:
    return "\n".join(describe_param(p) for p in space.params)


def _outcome(t: TrialRecord, objective: Objective = VAL_BPB) -> str:
    if not t.failed:
        return objective.show(t.val_bpb)
    reason = _short(t.error or "", ERROR_CHARS)
    return f"FAILED {t.status}" + (f" ({reason})" if reason and reason != t.status else "")


def trials_header(space: Space, objective: Objective = VAL_BPB) -> str:
    return f"trial proposer {objective.metric} | {', '.join(space.names)}"


def fmt_trial(t: TrialRecord, space: Space, objective: Objective = VAL_BPB) -> str:
    """One table row: number, proposer, the metric or the failure and its reason, then the values in space order."""
    values = ", ".join(fmt_value(t.params[n]) if n in t.params else "?" for n in space.names)
    return f"#{t.number} {t.proposer} {_outcome(t, objective)} | {values}"


def fmt_trials(trials: Sequence[TrialRecord], space: Space, objective: Objective = VAL_BPB) -> str:
    return "\n".join(fmt_trial(t, space, objective) for t in trials)


def best_trial(history: Sequence[TrialRecord]) -> TrialRecord | None:
    ok = [t for t in history if not t.failed]
    return min(ok, key=lambda t: t.val_bpb) if ok else None


def estimate_tokens(messages: Sequence[Mapping]) -> int:
    """A rough token count, on the high side: one per digit, other characters / 1.9.

    Prompts here are mostly numbers and UPPER_CASE names. SmolLM2's tokenizer (like Qwen's) splits numbers into
    single digits and the names into many pieces: it counts about 1.6 characters per token in a Centaur prompt,
    so the usual characters / 3.5 would undercount by half and overflow the context. Larger models' tokenizers
    need fewer tokens; for them this overestimates."""
    text = "".join(m["content"] for m in messages)
    digits = sum(ch.isdigit() for ch in text)
    return int(math.ceil(digits + (len(text) - digits) / CHARS_PER_TOKEN))


def _section(title: str, body: str) -> str:
    return f"## {title}\n{body}"


def _window_start(n_trials: int, n: int) -> int:
    """Where the table of evaluations starts: the last n trials at least, from a start that moves n // 2 trials
    at a time, so that the prompts of consecutive turns share the table's first rows. A server that keeps the
    previous prompt (llama.cpp does) then reads only the rows that are new, not the whole table again: with the
    table after the parts that never change, most of a 5,000-token prompt."""
    step = max(1, n // 2)
    return max(0, (n_trials - n) // step * step)


def _recent(history: Sequence[TrialRecord], space: Space, n: int, n_failures: int = 5,
            objective: Objective = VAL_BPB) -> str:  # fmt: skip
    """The last n trials or up to n // 2 more (see `_window_start`) as a table, oldest first, after the most
    recent `n_failures` failures before them (where not to go), which change only with the window."""
    start = _window_start(len(history), n) if n else len(history)
    rows = list(history)[start:]
    if not rows:
        return "none yet"
    earlier = [t for t in list(history)[:start] if t.failed][-n_failures:] if n_failures else []
    failures = f"Earlier failures:\n{fmt_trials(earlier, space, objective)}\n" if earlier else ""
    head = f"(oldest first; {start} earlier trials not shown)" if start else "(oldest first)"
    return f"{failures}{head}\n{trials_header(space, objective)}\n{fmt_trials(rows, space, objective)}"


def _running(pending: Sequence[Mapping], space: Space) -> list[str]:
    """The section listing the configurations still running (parallel studies), or nothing when none is."""
    if not pending:
        return []
    rows = "\n".join(", ".join(fmt_value(p[n]) if n in p else "?" for n in space.names) for p in pending)
    title = f"Running now ({len(pending)}; results not known yet, do not propose these again)"
    return [_section(title, f"{', '.join(space.names)}\n{rows}")]


def _failures_summary(history: Sequence[TrialRecord]) -> str:
    failed = [t for t in history if t.failed]
    if not failed:
        return "No trial has failed so far."
    counts: dict[str, int] = {}
    for t in failed:
        counts[t.status] = counts.get(t.status, 0) + 1
    return (f"{len(failed)} of {len(history)} trials failed ("
            + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ").")  # fmt: skip


def predicted_to_fail_message(params: Mapping, p_fail: float, space: Space) -> str:
    """The follow-up of a reply whose configuration the study's failure model predicts to fail (jaxhpo.feasibility):
    say so, and ask for another."""
    return (
        f"The configuration you proposed, {fmt_config(params, space)}, is predicted to fail (p={p_fail:.2f}, by a "
        "classifier of this study's trials that failed). Propose a different configuration, away from the failed "
        f"ones: after an oom, a smaller model or batch. {REPLY_INSTRUCTION}"
    )


def _fit(build: Callable[[int], list[dict]], n_recent: int, max_tokens: int) -> list[dict]:
    """build(n) -> messages with the last n evaluations (and up to min(n, 5) earlier failures); the largest n
    whose prompt fits `max_tokens` estimated tokens (down to 1 if even that is over)."""
    n = n_recent
    messages = build(n)
    while estimate_tokens(messages) > max_tokens and n > 1:
        n -= 1
        messages = build(n)
    return messages


SYSTEM = (
    "You are an expert in training small GPT language models and in hyperparameter optimization. "
    "You propose one hyperparameter configuration at a time as a JSON object."
)

def _goal(objective: Objective) -> str:
    return (f"{objective.reports()} A trial fails with oom when the model or batch needs more memory than the "
            "device has.")  # fmt: skip


def _tables(objective: Objective) -> str:
    return (f"Trials are listed one per row: trial number, who proposed it, {objective.metric} (or FAILED, the "
            "status and its reason), then the parameter values in the order of the search space.")  # fmt: skip


def _best_text(best: TrialRecord, space: Space, objective: Objective) -> str:
    value = objective.show(best.val_bpb)
    return f"Trial #{best.number}, {objective.metric} {value}:\n{fmt_config(best.params, space)}"


def _reply_format(space: Space) -> str:
    return (
        f"Give all {space.dim} parameters, each within its range, as one JSON object with exactly these keys: "
        f"{', '.join(space.names)}."
    )


def _messages(static: Sequence[str], dynamic: Sequence[str]) -> list[dict]:
    """System + user message. The parts that never change within a study come first, so that a server that
    caches the previous prompt's prefix (llama.cpp does) only processes the rest anew."""
    user = "\n\n".join([*static, *dynamic, REPLY_INSTRUCTION])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# -- method=llm ------------------------------------------------------------------------------------------------------


def llm_prompt(space: Space, history: Sequence[TrialRecord], best: TrialRecord | None = None,
               n_recent: int = RECENT, max_tokens: int = MAX_PROMPT_TOKENS, pending: Sequence[Mapping] = (),
               objective: Objective = VAL_BPB) -> list[dict]:  # fmt: skip
    """The chat messages for one proposal of method=llm: the space, the last `n_recent` evaluations or a few more
    (with failure reasons; see `_window_start`), the configurations still running (if any), the best configuration
    so far, guidance, and the JSON-only instruction; at most `max_tokens` estimated tokens (fewer evaluations are
    shown if need be)."""
    best = best if best is not None else best_trial(history)
    if best is not None:
        best_text = _best_text(best, space, objective)
    else:
        best_text = "No trial has succeeded yet. The default configuration:\n" + fmt_config(space.default(), space)
    static = [
        _goal(objective),
        _section("Search space", describe_space(space)),
        _section("How to choose", "\n".join([
            "- Propose the next configuration to evaluate: one you expect to reach a "
            f"{objective.better} {objective.metric} than the best.",
            "- Start from the best configuration and change one to three parameters, using what you know about "
            "training GPT models (learning rates, batch sizes, model size for a fixed training time).",
            "- Do not repeat a configuration that was already evaluated.",
            "- Stay away from configurations like the failed ones: after an oom, use a smaller model or batch.",
        ])),  # fmt: skip
        _tables(objective),
    ]

    def build(n: int) -> list[dict]:
        return _messages(static, [
            _section("Evaluations", _recent(history, space, n, min(n, 5), objective)),
            *_running(pending, space),
            _section("Best configuration so far", best_text),
            _failures_summary(history) + " " + _reply_format(space),
        ])  # fmt: skip

    return _fit(build, n_recent, max_tokens)


# -- warm start (method.options.warmstart) ------------------------------------------------------------------------------


def warmstart_schema(space: Space, k: int) -> dict:
    """The JSON schema of a warm-start reply: {"configurations": [k configurations]}."""
    items = {"type": "array", "items": json_schema(space), "minItems": k, "maxItems": k}
    return {"type": "object", "properties": {"configurations": items}, "required": ["configurations"],
            "additionalProperties": False}  # fmt: skip


def warmstart_prompt(space: Space, k: int, history: Sequence[TrialRecord] = (),
                     objective: Objective = VAL_BPB) -> list[dict]:  # fmt: skip
    """The chat messages of a warm start: `k` diverse configurations to run first (a conservative one, an
    aggressive one, creative ones), given the space and the trials so far (usually just the default's)."""
    strategies = [
        "1. Conservative: settings you know train small GPTs reliably, close to the default.",
        "2. Aggressive: a larger model or higher learning rates, as far as you expect it still trains well.",
    ][:k]
    if k > 2:
        strategies.append(f"{'3' if k == 3 else f'3 to {k}'}. Creative: each explores a different trade-off "
                          "(model size against training steps, batch size, learning rates, the schedule).")
    done = _section("Evaluated so far", _recent(history, space, RECENT, 5, objective)) if history else ""
    user = "\n\n".join(x for x in [
        _goal(objective),
        _section("Search space", describe_space(space)),
        _section(f"Propose {k} different configurations to evaluate first", "\n".join([
            *strategies, "Do not repeat a configuration already evaluated; make the configurations differ.",
        ])),
        _tables(objective) if history else "",
        done,
        f'Reply with one JSON object {{"configurations": [...]}} holding {k} objects, each with all {space.dim} '
        f"parameters within their ranges, exactly these keys: {', '.join(space.names)}.",
        REPLY_INSTRUCTION,
    ] if x)  # fmt: skip
    system = ("You are an expert in training small GPT language models and in hyperparameter optimization. "
              "You propose starting configurations for a search as JSON.")  # fmt: skip
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# -- Centaur -----------------------------------------------------------------------------------------------------------


def _sigma_phase(sigma: float, sigma0: float) -> str:
    if sigma < 0.4 * sigma0:
        return "small: CMA-ES is converging, so exploit: stay close to the mean and change little"
    if sigma > 0.8 * sigma0:
        return "large: CMA-ES is still exploring, so use your prior knowledge of good settings"
    return "medium: balance staying near the mean with your prior knowledge"


def covariance_text(names: Sequence[str], C: Any) -> str:
    """The lower triangle of C, one row per parameter, 2 decimals without the leading zero (".07", "-.12");
    scaled by a power of ten, and says so, when its largest variance is below 0.1 or above 10."""
    C = np.asarray(C, dtype=float)
    top = float(np.max(np.abs(np.diag(C)))) if C.size else 1.0
    k = 0 if not math.isfinite(top) or top == 0 or 0.1 <= top < 10 else -math.floor(math.log10(top))
    scaled = C * 10.0**k
    note = f"C x 1e{k}, " if k else ""
    lines = [f"({note}symmetric: row k lists C[k][1..k], columns in the same order as the rows)"]
    for i, n in enumerate(names):
        lines.append(f"{i + 1} {n}: " + " ".join(_f2(scaled[i, j]) for j in range(i + 1)))
    return "\n".join(lines)


def _f2(x: float) -> str:
    s = f"{x:.2f}"
    if s in ("0.00", "-0.00"):
        return "0"
    return s.replace("0.", ".", 1) if s.startswith(("0.", "-0.")) else s


def _mean_lines(space: Space, state: Mapping) -> str:
    names = list(state.get("names") or space.names)
    mean = np.array([state["mean"][n] for n in names], dtype=float)
    decoded = space.from_unit(np.clip(mean, 0.0, 1.0))
    sigma = float(state["sigma"])
    C = np.asarray(state["covariance"], dtype=float)
    sd = sigma * np.sqrt(np.maximum(np.diag(C), 0.0))
    lines = []
    for i, n in enumerate(names):
        lines.append(f"- {n} = {fmt_value(decoded[n])} (unit {mean[i]:.2f} ± {sd[i]:.2f})")
    return "\n".join(lines)


def centaur_prompt(space: Space, state: Mapping, history: Sequence[TrialRecord], suggestion: Mapping | None,
                   n_recent: int = RECENT, n_top: int = TOP, max_tokens: int = MAX_PROMPT_TOKENS,
                   pending: Sequence[Mapping] = (), suggestion_p_fail: float | None = None,
                   objective: Objective = VAL_BPB) -> list[dict]:  # fmt: skip
    """The chat messages for one Centaur LLM turn.

    `state` is `CMAESProposer.state_summary()` (optionally with "sigma0", the initial step size); `suggestion` is
    the configuration CMA-ES would run next, and `suggestion_p_fail` the failure model's probability that it fails
    when the model predicts it does (jaxhpo.feasibility; None: not predicted to fail, or no model). The prompt holds
    the search space; the last evaluations with failure reasons (before the rest, which changes every turn: see
    `_window_start`); CMA-ES's mean (decoded to parameter values and in unit coordinates, with each coordinate's
    standard deviation σ·sqrt(C_kk)), σ, the covariance matrix labelled by parameter, the suggestion (marked when
    predicted to fail); the top trials; the configurations still running (if any); the best configuration;
    guidance; and "Reply with JSON only." -- at most `max_tokens` estimated tokens (fewer recent evaluations are
    shown if need be).
    """
    names = list(state.get("names") or space.names)
    sigma = float(state["sigma"])
    sigma0 = float(state.get("sigma0") or 0.25)
    best = best_trial(history)
    ok = sorted((t for t in history if not t.failed), key=lambda t: t.val_bpb)[:n_top]
    top = f"{trials_header(space, objective)}\n{fmt_trials(ok, space, objective)}" if ok else "no successful trial yet"
    best_text = _best_text(best, space, objective) if best else "No trial has succeeded yet."
    sugg = fmt_config(suggestion, space) if suggestion is not None else "none"
    static = [
        _goal(objective),
        _section("Search space", describe_space(space)),
        _section("How to choose", "\n".join([
            "CMA-ES proposes most trials. You may replace its next suggestion with your own configuration; "
            "CMA-ES learns from its result. CMA-ES searches the unit cube: each parameter scaled to [0, 1] "
            "(log-scale parameters by their logarithm; integers and choices own equal slices); its step size "
            "sigma started at " + f"{sigma0:g}.",
            "- When sigma is small, exploit: propose a point near the mean, close to the best trials.",
            "- When sigma is large, use your prior knowledge of good GPT training settings.",
            "- Steer away from regions where trials failed (after an oom, a smaller model or batch).",
            "- Do not repeat a configuration that was already evaluated.",
        ])),  # fmt: skip
        _tables(objective),
    ]
    cmaes = "\n".join([
        f"Generation {state.get('generation', '?')}; step size sigma = {sigma:.3f}.",
        "Mean of the search distribution, decoded (unit coordinate ± its standard deviation sigma*sqrt(C_kk)):",
        _mean_lines(space, state),
        "Covariance matrix C (sampling covariance = sigma^2 * C):",
        covariance_text(names, state["covariance"]),
        f"CMA-ES's next suggestion:\n{sugg}",
        *([f"It is predicted to fail (p={suggestion_p_fail:.2f}, by a classifier of the trials that failed)."]
          if suggestion_p_fail is not None else []),
    ])  # fmt: skip

    def build(n: int) -> list[dict]:
        return _messages(static, [
            _section("Evaluations", _recent(history, space, n, min(n, 5), objective)),  # first: see _window_start
            _section("CMA-ES state", cmaes),
            _section(f"Top {len(ok)} trials", top),
            *_running(pending, space),
            _section("Best configuration so far", best_text),
            f"Now sigma = {sigma:.3f}, which is {_sigma_phase(sigma, sigma0)}. {_failures_summary(history)} "
            + _reply_format(space),
        ])  # fmt: skip

    return _fit(build, n_recent, max_tokens)
