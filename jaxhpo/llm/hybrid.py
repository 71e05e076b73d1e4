"""method=hybrid's outer turn: the prompt that shows the structures tried so far and asks for the next structure
and its numeric search space, and the reading of the reply (validated against the menu, ranges clamped).

The reply is one JSON object: {"parent": "<structure id>", "changes": {"<option>": value, ...},
"space": {"<PARAM>": [low, high] or [choices...], ...}}. Everything in it is checked: an unknown option or value
is dropped with a note, a parent that was not tried becomes the best structure, ranges are clipped to the space's
own, a parameter the space lacks is dropped; an empty space means every number at its full range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from jaxhpo import structure
from jaxhpo.llm.prompt import ReplyError, extract_object, fmt_value
from jaxhpo.space import Param, Space

SYSTEM = ("You are an expert in training small GPT language models. You change a model's architecture, one or two "
          "choices at a time, to lower its validation bits per byte (val_bpb); a classical optimizer then tunes "
          "the numbers inside the architecture you choose. You answer with one JSON object only.")  # fmt: skip


@dataclass
class StructureSummary:
    """What the prompt shows of one structure tried: its choices, where it came from and how its trials went."""

    structure_id: str
    choices: dict
    parent: str | None
    trials: int = 0
    failures: int = 0
    best_val_bpb: float | None = None
    best_params: dict = field(default_factory=dict)


@dataclass
class StructureReply:
    """The next structure and its numeric space, read from a reply; `repairs` says what was changed to use it."""

    parent: str
    choices: dict
    space: dict  # name -> spec, a sub-space of the numeric parameters
    repairs: list[str]


def menu_text() -> str:
    """The structural menu as the prompt lists it: each option's values, default and meaning."""
    return "\n".join(f"- {name}: one of {', '.join(structure.show(v) for v in o.values)} "
                     f"(default {structure.show(o.default)}): {o.means}"
                     for name, o in structure.MENU.items())  # fmt: skip


def _range_text(p: Param) -> str:
    if p.type == "categorical":
        return f"one of {', '.join(map(fmt_value, p.choices))}"
    scale = " (log scale)" if p.log else ""
    return f"{fmt_value(p.low)} to {fmt_value(p.high)}{scale}"


def _structure_line(s: StructureSummary, numeric: Space) -> str:
    changed = structure.changes({}, s.choices)
    what = structure.describe(changed) or "the default structure"
    best = "no successful trial" if s.best_val_bpb is None else f"best val_bpb {s.best_val_bpb:.4f}"
    numbers = ", ".join(f"{n}={fmt_value(s.best_params[n])}" for n in numeric.names if n in s.best_params)
    return (f"- {s.structure_id} (parent {s.parent or '-'}): {what}; {s.trials} trials, {s.failures} failed, {best}"
            + (f"; best numbers: {numbers}" if numbers else ""))  # fmt: skip


def structure_prompt(numeric: Space, tried: Sequence[StructureSummary], noise: float | None) -> list[dict]:
    """The outer turn's messages: the menu, the numeric parameters, every structure tried, what to answer."""
    best = min((s for s in tried if s.best_val_bpb is not None), key=lambda s: s.best_val_bpb, default=None)
    params = "\n".join(f"- {p.name}: {_range_text(p)}" for p in numeric.params)
    noise_text = "unknown" if noise is None else f"{noise:.4f}"
    user = "\n\n".join([
        "Architecture options (change one or two from the parent you choose; unlisted options stay as the "
        f"parent's):\n{menu_text()}",
        f"Numeric parameters a classical optimizer can tune inside the architecture:\n{params}",
        "Architectures tried so far (lower val_bpb is better; differences below the noise of "
        f"{noise_text} val_bpb are not real):\n" + "\n".join(_structure_line(s, numeric) for s in tried),
        f"The best so far is {best.structure_id}." if best else "No architecture has a successful trial yet.",
        'Reply with one JSON object: {"parent": "<an id above>", "changes": {"<option>": <value>}, '
        '"space": {"<PARAMETER>": [<low>, <high>]}} -- the architecture to try next, as changes to its parent, and '
        "the 2 to 5 numeric parameters worth tuning inside it, with ranges (categorical ones: a list of choices).",
    ])  # fmt: skip
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def reply_schema(numeric: Space, tried_ids: Sequence[str]) -> dict:
    """The JSON schema a server that takes `response_format` holds the reply to."""
    options = {name: {"enum": list(o.values)} for name, o in structure.MENU.items()}
    space = {p.name: {"type": "array", "minItems": 1, "maxItems": 8} for p in numeric.params}
    return {
        "type": "object",
        "properties": {"parent": {"type": "string", "enum": list(tried_ids)},
                       "changes": {"type": "object", "properties": options, "additionalProperties": False},
                       "space": {"type": "object", "properties": space, "additionalProperties": False}},
        "required": ["parent", "changes", "space"],
    }  # fmt: skip


def parse_structure_reply(text: str, numeric: Space, tried: Mapping[str, dict], best_id: str) -> StructureReply:
    """The next structure and sub-space from a reply (`tried`: structure id -> choices). ReplyError when the reply
    holds no JSON object or proposes no architecture that was not tried already."""
    obj, repairs = extract_object(text)
    parent = obj.get("parent")
    if parent not in tried:
        repairs.append(f"parent {parent!r} was not tried: took the best structure {best_id}")
        parent = best_id
    choices = dict(tried[parent])
    changes = obj.get("changes") if isinstance(obj.get("changes"), dict) else {}
    for name, value in changes.items():
        try:
            choices = structure.check({**choices, name: value})
        except structure.StructureError as e:
            repairs.append(f"dropped change {name}: {e}")
    sid = structure.structure_id(choices)
    if sid in tried:
        raise ReplyError(f"proposes structure {sid}, which was already tried")
    space, notes = sub_space(obj.get("space"), numeric)
    return StructureReply(parent, choices, space, repairs + notes)


def sub_space(raw: Any, numeric: Space) -> tuple[dict, list[str]]:
    """The numeric sub-space a reply asks for, each range clipped to the parameter's own; every parameter at its
    full range when the reply names none that can be used."""
    out, notes = {}, []
    for name, value in (raw if isinstance(raw, dict) else {}).items():
        p = next((q for q in numeric.params if q.name == name), None)
        if p is None:
            notes.append(f"space: dropped unknown parameter {name}")
            continue
        spec = _narrowed(p, value)
        if spec is None:
            notes.append(f"space: {name} {json.dumps(value, default=str)[:60]} is no range of it; full range")
            spec = _spec(p)
        out[name] = spec
    if not out:
        notes.append("space: no usable parameter; tuning every number at its full range")
        out = {p.name: _spec(p) for p in numeric.params}
    return out, notes


def _spec(p: Param, **changes: Any) -> dict:
    spec = {"type": p.type, "key": p.key, "default": p.default}
    if p.type == "categorical":
        spec["choices"] = list(p.choices)
    else:
        spec.update(low=p.low, high=p.high, log=p.log, pow2=p.pow2)
    return {**spec, **changes}


def _narrowed(p: Param, value: Any) -> dict | None:
    if not isinstance(value, list) or not value:
        return None
    if p.type == "categorical" or (p.levels is not None and len(value) != 2):
        keep = [v for v in (p.levels or ()) if v in value]
        if not keep:
            return None
        return _spec(p, type="categorical", choices=keep, default=keep[0], log=False, pow2=False) \
            if p.type != "categorical" else _spec(p, choices=keep, default=keep[0])
    if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    low, high = max(min(value), p.low), min(max(value), p.high)
    if p.pow2:
        low, high = p.clamp(low), p.clamp(high)
    elif p.type == "int":
        low, high = int(round(low)), int(round(high))
    if not low < high:
        return None
    return _spec(p, low=low, high=high, default=p.clamp(min(max(p.default, low), high)))
