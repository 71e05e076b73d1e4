"""Structures: the GPT's architectural choices a search may change, as a menu, and the id of a set of choices.

A structure is one value for every option of `MENU` (autoresearch's where it says nothing); its `structure_id` is a
hash of those values, so two trials ran the same architecture exactly when their ids are equal. The numeric knobs
a structure brings (the MLP's hidden ratio) are not in the menu: they belong to the numeric space tuned inside it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from model.gpt import MLPS, NORMS, VALUE_EMBEDS, GPTConfig


class StructureError(ValueError):
    """A structure with an option or a value the menu does not have; the message is one line."""


@dataclass(frozen=True)
class Option:
    """One architectural choice: the model config key it sets, its values (the default first) and what it means."""

    key: str
    values: tuple
    means: str

    @property
    def default(self) -> Any:
        return self.values[0]


_DEFAULT = GPTConfig()


def _option(name: str, values: tuple, means: str) -> Option:
    default = getattr(_DEFAULT, name)
    return Option(f"model.{name}", (default, *(v for v in values if v != default)), means)


# Names as the LLM sees them; values as the trainer takes them (None: off).
MENU: dict[str, Option] = {
    "mlp": _option("mlp", MLPS, "the MLP's activation; swiglu adds a gate matrix (tune model.mlp_ratio with it: "
                                "8/3 keeps relu2's parameter count)"),  # fmt: skip
    "value_embeds": _option("value_embeds", VALUE_EMBEDS,
                            "which layers add a per-token value embedding to attention's values"),
    "mix_scalars": _option("mix_scalars", (True, False),
                           "learned per-layer scalars mixing the residual stream with the first layer's input"),
    "qk_norm": _option("qk_norm", (True, False), "RMSNorm on queries and keys"),
    "softcap": _option("softcap", (15.0, 30.0, 5.0, None), "logits = cap × tanh(logits / cap); null: no cap"),
    "rope_base": _option("rope_base", (10000.0, 1000.0, 100000.0), "the rotary embeddings' frequency base"),
    "tie_embeddings": _option("tie_embeddings", (False, True), "the output layer reuses the token embedding"),
    "window_pattern": _option("window_pattern", ("SSSL", "SL", "SSLL", "L", "S"),
                              "attention windows per layer, repeated: S half the context, L all; the last is L"),
    "norm": _option("norm", NORMS, "pre: RMSNorm before each sublayer; sandwich: also on its output"),
}
DEFAULT = {name: o.default for name, o in MENU.items()}


def check(choices: Mapping[str, Any]) -> dict[str, Any]:
    """The full structure (defaults filled in) for `choices`, or a one-line StructureError naming the option."""
    full = dict(DEFAULT)
    for name, value in choices.items():
        option = MENU.get(name)
        if option is None:
            raise StructureError(f"unknown structure option {name!r}; the menu has: {', '.join(MENU)}")
        # the menu's own value, so that 15 and 15.0 are one structure and 1 is not true
        same = [v for v in option.values if v == value and isinstance(v, bool) == isinstance(value, bool)]
        if not same:
            raise StructureError(f"structure option {name}={show(value)} is not on the menu; choose one of: "
                                 f"{', '.join(map(show, option.values))}")  # fmt: skip
        full[name] = same[0]
    return full


def structure_id(choices: Mapping[str, Any]) -> str:
    """A short hash of the full structure: equal ids, equal architectures."""
    full = check(choices)
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]


def overrides(choices: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer config keys and values that build the structure."""
    return {MENU[name].key: value for name, value in check(choices).items()}


def changes(parent: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """The options whose value differs from the parent's, with the child's value."""
    p, c = check(parent), check(child)
    return {name: c[name] for name in MENU if c[name] != p[name]}


def one_change_neighbours(choices: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every structure one menu change away from `choices`, in menu order (the fallback's search order)."""
    full = check(choices)
    for name, option in MENU.items():
        for value in option.values:
            if value != full[name]:
                yield {**full, name: value}


def show(value: Any) -> str:
    """A menu value as the prompt and the report write it: JSON, null for None."""
    return "null" if value is None else json.dumps(value, default=str)


# Numeric knobs a structure brings, tuned inside it like the space's own numbers.
KNOBS: dict[str, dict] = {
    "MLP_RATIO": {"type": "float", "key": "model.mlp_ratio", "low": 1.0, "high": 8.0, "default": _DEFAULT.mlp_ratio},
}


def param_name(option: str) -> str:
    """The name of a menu option as a parameter of a structure-and-numbers space (UPPER_CASE, as the space's)."""
    return option.upper()


def with_structure(params: Mapping[str, Mapping]) -> dict[str, dict]:
    """A space definition (name -> spec, as a space file's params) plus a categorical per menu option and the
    knobs: the space whose configurations carry a structure and its numbers. A menu option replaces a space
    parameter that sets the same key (a window pattern in the space becomes a structural choice)."""
    menu_keys = {o.key for o in MENU.values()} | {k["key"] for k in KNOBS.values()}
    numeric = {name: dict(spec) for name, spec in params.items() if spec["key"] not in menu_keys}
    structural = {param_name(name): {"type": "categorical", "key": o.key, "choices": list(o.values),
                                     "default": o.default} for name, o in MENU.items()}  # fmt: skip
    return {**numeric, **KNOBS, **structural}


def of_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The structure a configuration of a `with_structure` space builds (an option it lacks at its default)."""
    return check({name: params.get(param_name(name), o.default) for name, o in MENU.items()})


def id_of(params: Mapping[str, Any], hybrid: Mapping[str, Any] | None = None) -> str | None:
    """The structure id a configuration builds: the one its trial's `hybrid` meta names, else its parameters'
    (menu options it lacks at their defaults); None for values off the menu (another method's trial)."""
    if hybrid is not None:
        return hybrid["structure_id"]
    try:
        return structure_id(of_params(params))
    except StructureError:
        return None


def describe(changes: Mapping[str, Any]) -> str:
    """Menu choices as `option=value, ...` (empty for none)."""
    return ", ".join(f"{name}={show(value)}" for name, value in changes.items())
