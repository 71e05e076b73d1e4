"""Draft a search space from a training script: `python -m jaxhpo.extract PATH.py [-o OUT.yaml] [--name NAME]`.

The 2026 study found autoresearch's 14 hyperparameters by walking train.py's syntax tree for UPPER_CASE
module-level assignments of literals, leaving out the fixed ones (sequence length, time budget, eval tokens, peak
FLOPs), and took their ranges from a hand-written table (its Table 1). This does the same for any script:

- `NAME = literal` and `NAME: type = literal` directly in the module body; numbers (with constant arithmetic
  such as `2**19` or `-3e-4`, folded here without eval), strings and bools. Calls, other names, f-strings,
  tuples and lists, None, assignments inside functions or `if` blocks, and lower/MixedCase names are skipped.
- Names from Table 1 get the study's range and the trainer config key they set in this project. Any other name
  gets a guessed range around the script's value, a `# TODO: check range` comment, and the key
  `TODO.<name>`, which no trainer has, so a study refuses the space until the user maps it to a real key.
- `--trainer script` keys every parameter `script.NAME` instead: the script's own constant, which trainer=script
  sets in each trial's copy of the script; then only the TODO ranges need a look.

The result is a *draft* space YAML in the format of hydra_configs/space/autoresearch.yaml; read it before use.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import operator
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from jaxhpo.space import Space, SpaceError

PROG = "jaxhpo.extract"

# Fixed by the benchmark, not tuned: sequence length, time budget, evaluation size, hardware peak.
FIXED = frozenset({"MAX_SEQ_LEN", "SEQ_LEN", "SEQUENCE_LEN", "TIME_BUDGET", "EVAL_TOKENS", "H100_BF16_PEAK_FLOPS"})
FIXED_PARTS = ("PEAK_FLOPS",)  # any name containing one of these is fixed too

# The study's Table 1: autoresearch's 14 hyperparameters, their ranges, and the config key each sets here.
KNOWN: dict[str, dict[str, Any]] = {
    "DEPTH": {"type": "int", "key": "model.depth", "low": 4, "high": 24},
    "ASPECT_RATIO": {"type": "int", "key": "model.aspect_ratio", "low": 32, "high": 128},
    "HEAD_DIM": {"type": "int", "key": "model.head_dim", "low": 64, "high": 256, "log": True, "pow2": True},
    "DEVICE_BATCH_SIZE": {"type": "int", "key": "model.device_batch_size", "low": 32, "high": 256, "log": True,
                          "pow2": True},
    "TOTAL_BATCH_SIZE": {"type": "int", "key": "model.total_batch_size", "low": 65536, "high": 2097152,
                         "log": True, "pow2": True},
    "EMBEDDING_LR": {"type": "float", "key": "optim.embedding_lr", "low": 0.01, "high": 2.0, "log": True},
    "UNEMBEDDING_LR": {"type": "float", "key": "optim.unembedding_lr", "low": 0.0005, "high": 0.05, "log": True},
    "MATRIX_LR": {"type": "float", "key": "optim.matrix_lr", "low": 0.005, "high": 0.2, "log": True},
    "SCALAR_LR": {"type": "float", "key": "optim.scalar_lr", "low": 0.05, "high": 2.0, "log": True},
    "WEIGHT_DECAY": {"type": "float", "key": "optim.weight_decay", "low": 0.0, "high": 0.5},
    "WARMUP_RATIO": {"type": "float", "key": "optim.warmup_ratio", "low": 0.0, "high": 0.3},
    "WARMDOWN_RATIO": {"type": "float", "key": "optim.warmdown_ratio", "low": 0.1, "high": 0.8},
    "FINAL_LR_FRAC": {"type": "float", "key": "optim.final_lr_frac", "low": 0.0, "high": 0.2},
    "WINDOW_PATTERN": {"type": "categorical", "key": "model.window_pattern",
                       "choices": ["SSSL", "SSLL", "SLSL", "LLLL", "SSSS", "LSSL"]},
}

# Alternatives offered for string settings not in Table 1, by the last word of the name.
STRING_ALTERNATIVES = {
    "DTYPE": ["bfloat16", "float32", "float16"],
    "ACTIVATION": ["relu", "gelu", "silu"],
    "SCHEDULE": ["cosine", "linear", "constant"],
}

TODO_KEY = "TODO."  # prefix of the placeholder key of a parameter not in Table 1
UPPER_CASE = re.compile(r"[A-Z][A-Z0-9_]*")
LOG_WORDS = {"LR", "EPS", "EPSILON"}  # name words that call for a log scale
FRACTION_WORDS = {"RATIO", "FRAC", "FRACTION", "DROPOUT", "PROB", "P"}  # name words of a value in [0, 1]


@dataclass(frozen=True)
class Found:
    """An UPPER_CASE module-level constant with a literal value: a hyperparameter candidate."""

    name: str
    value: bool | int | float | str
    line: int

    @property
    def kind(self) -> str:
        return type(self.value).__name__  # bool | int | float | str


@dataclass(frozen=True)
class Skipped:
    """A module-level assignment left out, and why."""

    name: str
    line: int
    reason: str


class NotLiteral(ValueError):
    """A value that is not a literal we can tune; the message says what it is."""


# ------------------------------------------------------------------------------------------------ extraction

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARYOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def literal_value(node: ast.expr) -> bool | int | float | str:
    """The value of a literal node: a number, string or bool, or constant arithmetic on numbers (`2**19`,
    `-1e-3`, `4 * 1024`). Raises NotLiteral for anything else. Never evaluates code."""
    if isinstance(node, ast.Constant):
        v = node.value
        if v is None:
            raise NotLiteral("None")
        if isinstance(v, (bool, int, float, str)):
            if isinstance(v, float) and not math.isfinite(v):
                raise NotLiteral("not a finite number")
            if isinstance(v, str) and "${" in v:
                raise NotLiteral("a string with ${, which the config loader would read as an interpolation")
            return v
        raise NotLiteral(f"a {type(v).__name__} constant")
    if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
        raise NotLiteral(f"a {type(node).__name__.lower()}: give each element its own name to tune it")
    if isinstance(node, (ast.UnaryOp, ast.BinOp)):
        return _number(node)
    what = {ast.Call: "a call", ast.Name: "another name", ast.Attribute: "an attribute", ast.JoinedStr: "an f-string",
            ast.Subscript: "a subscript"}.get(type(node), "an expression")
    raise NotLiteral(f"not a literal ({what})")


def _number(node: ast.expr) -> int | float:
    """Fold a tree of numeric constants joined by + - * / // % ** and unary +/-."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARYOPS:
        return _UNARYOPS[type(node.op)](_number(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 256 or abs(left) > 2**64):
            raise NotLiteral("not a literal (a power too large to fold)")
        try:
            value = _BINOPS[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as e:
            raise NotLiteral(f"not a literal ({e})") from None
        if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
            raise NotLiteral("not a finite real number")
        return value
    raise NotLiteral("not a literal (arithmetic on something other than numbers)")


def assignments(tree: ast.Module) -> Iterator[tuple[str, ast.expr, int]]:
    """(name, value node, line) for each name bound directly in the module body by `=` or an annotated `=`."""
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        for target in targets:  # A = B = 1 binds both
            if isinstance(target, ast.Name):
                yield target.id, value, stmt.lineno
            elif isinstance(target, (ast.Tuple, ast.List)):  # A, B = 1, 2 pairs them up when it can
                names = [t.id for t in target.elts if isinstance(t, ast.Name)]
                pairs = (isinstance(value, (ast.Tuple, ast.List)) and len(names) == len(target.elts)
                         == len(value.elts))
                for i, name in enumerate(names):
                    yield name, (value.elts[i] if pairs else value), stmt.lineno


def is_fixed(name: str, skip: Iterable[str] = ()) -> bool:
    return name in FIXED or name in set(skip) or any(part in name for part in FIXED_PARTS)


def scan(source: str, skip: Iterable[str] = ()) -> tuple[list[Found], list[Skipped]]:
    """Hyperparameter candidates in a script's source, in order of first assignment, and what was left out.
    A name assigned twice keeps its last literal value. Raises SyntaxError on a script that does not parse."""
    skip = {s.strip().upper() for s in skip if s.strip()}
    found: dict[str, Found] = {}
    skipped: list[Skipped] = []
    for name, node, line in assignments(ast.parse(source)):
        if not UPPER_CASE.fullmatch(name):
            skipped.append(Skipped(name, line, "not UPPER_CASE"))
        elif is_fixed(name, skip):
            skipped.append(Skipped(name, line, "fixed"))
        else:
            try:
                value = literal_value(node)
            except NotLiteral as e:
                found.pop(name, None)  # a later non-literal assignment overrides an earlier literal
                skipped.append(Skipped(name, line, str(e)))
                continue
            first = found.get(name)
            found[name] = Found(name, value, first.line if first else line)
    return list(found.values()), skipped


def extract_params(source: str, skip: Iterable[str] = ()) -> list[Found]:
    """The UPPER_CASE module-level literals of a script that are not fixed: its hyperparameter candidates."""
    return scan(source, skip)[0]


# ------------------------------------------------------------------------------------------------ drafting


def _words(name: str) -> set[str]:
    return set(name.split("_"))


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _fit(spec: dict, value) -> Any:
    """The nearest value to `value` inside a numeric spec's range (snapped to a power of two if pow2)."""
    x = min(max(value, spec["low"]), spec["high"])
    if spec.get("pow2"):
        return 2 ** round(math.log2(x))
    return int(round(x)) if spec["type"] == "int" else float(x)


def known_spec(f: Found) -> tuple[dict, str | None] | None:
    """Table 1's spec for `f` with the script's value as default (fitted into range; the note says so), or None
    when the name is not in Table 1 or its value's type does not fit the table's."""
    table = KNOWN.get(f.name)
    if table is None:
        return None
    spec, value, note = dict(table), f.value, None
    if spec["type"] == "categorical":
        if not isinstance(value, str):
            return None
        if value not in spec["choices"]:
            spec["choices"] = [*spec["choices"], value]
            note = f"the script's {value!r} added to Table 1's choices"
        spec["default"] = value
        return spec, note
    if isinstance(value, (bool, str)) or (spec["type"] == "int" and not float(value).is_integer()):
        return None
    value = int(value) if spec["type"] == "int" else float(value)
    default = _fit(spec, value)
    if default != value:
        verb = "clamped" if not spec["low"] <= value <= spec["high"] else "snapped to a power of two"
        note = f"default {verb} from the script's {value!r}"
    spec["default"] = default
    return spec, note


def guess_spec(f: Found) -> dict:
    """A placeholder spec for a name not in Table 1: a range guessed around the script's value."""
    name, v = f.name, f.value
    spec: dict[str, Any] = {"key": TODO_KEY + name.lower()}
    if isinstance(v, bool):  # strings, not YAML booleans: the space schema reads choices as strings
        choice = "true" if v else "false"
        return {"type": "categorical", **spec, "choices": ["true", "false"], "default": choice}
    if isinstance(v, str):
        extra = STRING_ALTERNATIVES.get(name.rsplit("_", 1)[-1], [])
        choices = [v] + [c for c in extra if c.lower() != v.lower()]
        return {"type": "categorical", **spec, "choices": choices, "default": v}
    if isinstance(v, int):
        if v > 0:
            low, high = max(1, v // 4), v * 4
            pow2 = _is_pow2(v) and v >= 2
            spec.update(low=low, high=high, **({"log": True, "pow2": True} if pow2 else {}))
        elif v == 0:
            spec.update(low=0, high=4)
        else:
            spec.update(low=2 * v, high=0)
        return {"type": "int", **spec, "default": v}
    v = float(v)
    words = _words(name)
    if v > 0 and (words & LOG_WORDS or name.endswith("LEARNING_RATE") or v < 1e-3):
        spec.update(low=v / 10, high=v * 10, log=True)
    elif v > 0:
        high = 2 * v
        if words & FRACTION_WORDS and v <= 1.0:
            high = min(high, 1.0)
        spec.update(low=0.0, high=high)
    elif v == 0:
        spec.update(low=0.0, high=1.0)
    else:
        spec.update(low=2 * v, high=0.0)
    return {"type": "float", **spec, "default": v}


def draft_space(found: Iterable[Found], name: str, trainer: str = "gpt") -> dict:
    """A space dict in the format of hydra_configs/space/*.yaml: `defaults`, `name` and `params` (Table 1
    entries where known, placeholders otherwise), plus `notes`: the end-of-line comment per parameter that
    `to_yaml` writes (not a key of the file). A parameter whose guessed spec would not load is left out with
    a note under the name `notes['']`."""
    params: dict[str, dict] = {}
    notes: dict[str, str] = {}
    for f in found:
        known = known_spec(f)
        if known is not None:
            spec, note = known
        else:
            spec, note = guess_spec(f), "TODO: check range"
            if trainer == "gpt":
                note += f"; set key to the trainer config key {f.name} sets"
            if f.name in KNOWN:
                note += f" (its {f.kind} value does not fit Table 1's {KNOWN[f.name]['type']})"
            elif spec["type"] == "categorical" and len(spec["choices"]) == 1:
                note += "; add alternatives to choices"
        if trainer == "script":  # the script's own constant, whatever the built-in trainer calls it
            spec["key"] = f"script.{f.name}"
        try:
            Space(name, {f.name: spec})
        except SpaceError as e:  # a guess that does not load: leave it out rather than write a broken file
            notes[""] = notes.get("", "") + f" {f.name} left out ({e});"
            continue
        params[f.name] = spec
        if note:
            notes[f.name] = note
    return {"defaults": ["space_schema", "_self_"], "name": name, "params": params, "notes": notes}


# ------------------------------------------------------------------------------------------------ YAML

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_FIELD_ORDER = ("type", "key", "low", "high", "log", "pow2", "choices", "default")


def _scalar(v) -> str:
    """One value in flow style, quoted where YAML would read it as something else."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        mantissa, e, exponent = repr(v).partition("e")
        if e:  # YAML 1.1 floats need a dot in the mantissa and a signed exponent: 1e-05 -> 1.0e-05
            mantissa += "" if "." in mantissa else ".0"
            exponent = exponent if exponent[0] in "+-" else "+" + exponent
            return f"{mantissa}e{exponent}"
        return mantissa
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    v = str(v)
    if _PLAIN.fullmatch(v) and yaml.safe_load(v) == v:
        return v
    return json.dumps(v)  # a JSON string is a YAML double-quoted string


def to_yaml(space: dict, header: str | None = None) -> str:
    """The space as YAML in the layout of hydra_configs/space/autoresearch.yaml, one flow mapping per
    parameter, with `space['notes']` written as end-of-line comments."""
    notes = space.get("notes", {})
    lines = [f"# {line}".rstrip() for line in (header or "").splitlines()]
    if notes.get(""):
        lines.append(f"# Left out:{notes['']}".rstrip(";"))
    lines += ["defaults:", *(f"  - {_scalar(d)}" for d in space.get("defaults", [])), ""]
    lines += [f"name: {_scalar(space['name'])}", "params:"]
    for pname, spec in space["params"].items():
        fields = ", ".join(f"{k}: {_scalar(spec[k])}" for k in _FIELD_ORDER if k in spec and spec[k] is not False)
        comment = f"  # {notes[pname]}" if pname in notes else ""
        lines.append(f"  {_scalar(pname)}: {{{fields}}}{comment}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ CLI


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", and {len(names) - limit} more" if len(names) > limit else "")


def summary(path: str, space: dict, skipped: list[Skipped]) -> str:
    params, notes = space["params"], space.get("notes", {})
    todo = [n for n, s in params.items() if str(s["key"]).startswith(TODO_KEY)]
    head = (f"{PROG}: {path}: {len(params)} hyperparameters: {len(params) - len(todo)} from Table 1, "
            f"{len(todo)} placeholder{'' if len(todo) == 1 else 's'}")
    if all(str(s["key"]).startswith("script.") for s in params.values()):  # --trainer script: no placeholder keys
        guessed = [n for n in params if notes.get(n, "").startswith("TODO")]
        head = (f"{PROG}: {path}: {len(params)} hyperparameters: {len(params) - len(guessed)} with Table 1's range, "
                f"{len(guessed)} with a guessed one")
    if todo:
        head += f" ({_listing(todo)}): set each TODO key before running"
    out = [head]
    out += [f"  {n}: {notes[n]}" for n in params if n in notes and n not in todo]
    if notes.get(""):
        out.append(f"  left out:{notes['']}".rstrip(";"))
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s.reason, []).append(s.name)
    out += [f"  skipped ({reason}): {_listing(names)}" for reason, names in by_reason.items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a training script, e.g. train.py")
    parser.add_argument("-o", "--output", help="write the draft space YAML here (default: stdout)")
    parser.add_argument("--name", help="the space's name (default: the script's file name without .py)")
    parser.add_argument("--skip", default="", help="more fixed names to leave out, comma-separated: A,B")
    parser.add_argument("--trainer", choices=("gpt", "script"), default="gpt",
                        help="whose keys: the built-in trainer's (model.depth, ...) or the script's own constants "
                             "(script.NAME, for trainer=script)")  # fmt: skip
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2

    path = Path(args.path)
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return fail(f"no such file: {path}")
    except (OSError, UnicodeDecodeError) as e:
        return fail(f"cannot read {path}: {e}")
    try:
        found, skipped = scan(source, args.skip.split(","))
    except SyntaxError as e:
        return fail(f"{path}:{e.lineno}: syntax error: {e.msg}; fix the script and run again")
    except (ValueError, RecursionError) as e:  # e.g. null bytes in the source, absurdly deep nesting
        return fail(f"{path}: cannot parse: {e}")
    if not found:
        return fail(f"{path}: no UPPER_CASE module-level literal assignments (NAME = 0.1) to tune")

    space = draft_space(found, args.name or path.stem, args.trainer)
    if not space["params"]:
        return fail(f"{path}: no parameter could be drafted:{space['notes'].get('', '')}".rstrip(";"))
    header = (f"Draft search space extracted from {path.name} by `python -m {PROG}`.\n"
              "Ranges and keys come from the study's Table 1 where the name is known; lines marked TODO are\n"
              "guesses with a placeholder key (TODO.<name>) that a study rejects until you set the real key.")
    if args.trainer == "script":
        header = (f"Draft search space extracted from {path.name} by `python -m {PROG} --trainer script`: each key\n"
                  f"script.NAME sets the constant NAME of the script (trainer=script trainer.path={path}).\n"
                  "Ranges come from the study's Table 1 where the name is known; lines marked TODO are guesses.")
    text = to_yaml(space, header)
    if args.output:
        out = Path(args.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as e:
            return fail(f"cannot write {out}: {e}")
    else:
        sys.stdout.write(text)
    print(summary(str(path), space, skipped) + (f"\nwrote {args.output}" if args.output else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
