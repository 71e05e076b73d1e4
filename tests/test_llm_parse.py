"""The LLM's side of the study without a server: the JSON schema of a configuration, the defensive reply parser on
literal replies (clean, fenced, stringly-typed, out of bounds, misnamed, truncated, not JSON at all), and what the
two prompts must contain and how long they may get."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxhpo.llm.prompt import (
    MAX_PROMPT_TOKENS, RECENT, REPLY_INSTRUCTION, ReplyError, centaur_prompt, estimate_tokens, fmt_value, json_schema,
    llm_prompt, parse_reply, warmstart_prompt,
)  # fmt: skip
from jaxhpo.objective import Objective
from jaxhpo.proposers import CMAESProposer
from tests.test_proposers import SPACE, objective, record, study

DEFAULT = SPACE.default()


def reply(**changes) -> str:
    return json.dumps(DEFAULT | changes)


# -- the schema -------------------------------------------------------------------------------------------------------


def test_json_schema_describes_one_configuration():
    schema = json_schema(SPACE)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == list(SPACE.names) and list(schema["properties"]) == list(SPACE.names)
    props = schema["properties"]
    assert props["DEPTH"] == {"type": "integer", "minimum": 4, "maximum": 24}
    assert props["HEAD_DIM"] == {"type": "integer", "enum": [64, 128, 256]}
    assert props["MATRIX_LR"] == {"type": "number", "minimum": 0.005, "maximum": 0.2}
    assert props["WINDOW_PATTERN"] == {"type": "string", "enum": ["SSSL", "SSLL", "SLSL", "LLLL", "SSSS", "LSSL"]}
    json.dumps(schema)
    try:
        import jsonschema
    except ImportError:  # structure checked above; validate by hand
        for p in SPACE.params:
            s = props[p.name]
            v = DEFAULT[p.name]
            assert v in s["enum"] if "enum" in s else s["minimum"] <= v <= s["maximum"]
        return
    jsonschema.validate(DEFAULT, schema)
    for params in (SPACE.sample(np.random.default_rng(i)) for i in range(20)):
        jsonschema.validate(params, schema)
    for bad in (DEFAULT | {"DEPTH": 99}, DEFAULT | {"HEAD_DIM": 100}, DEFAULT | {"X": 1},
                {k: v for k, v in DEFAULT.items() if k != "DEPTH"}, DEFAULT | {"WINDOW_PATTERN": "XX"}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


# -- the parser -------------------------------------------------------------------------------------------------------


def test_clean_json():
    params, repairs = parse_reply(reply(DEPTH=12, MATRIX_LR=0.02), SPACE)
    assert params == DEFAULT | {"DEPTH": 12, "MATRIX_LR": 0.02} and repairs == []
    assert type(params["DEPTH"]) is int and type(params["WEIGHT_DECAY"]) is float


def test_json_in_fences_with_prose():
    text = f"Sure! Here is my proposal:\n```json\n{reply(DEPTH=10)}\n```\nThis should lower val_bpb."
    assert parse_reply(text, SPACE) == (DEFAULT | {"DEPTH": 10}, [])
    text = f"I suggest {reply(DEPTH=11)} because deeper is better."  # no fences, prose on both sides
    assert parse_reply(text, SPACE) == (DEFAULT | {"DEPTH": 11}, [])
    text = f"Step [1] of my reasoning: {{ deeper }}. Answer: {reply(DEPTH=7)}"  # brackets and braces in prose
    assert parse_reply(text, SPACE) == (DEFAULT | {"DEPTH": 7}, [])


def test_numbers_as_strings_and_names_in_other_case():
    obj = {k.lower(): v for k, v in DEFAULT.items() if k != "WEIGHT_DECAY"}
    obj |= {"depth": "12", "matrix_lr": "0.02", "Weight-Decay": "0.1"}
    params, repairs = parse_reply(json.dumps(obj), SPACE)
    assert params == DEFAULT | {"DEPTH": 12, "MATRIX_LR": 0.02, "WEIGHT_DECAY": 0.1}
    assert "DEPTH: read '12' as 12" in repairs and "MATRIX_LR: read '0.02' as 0.02" in repairs
    assert "DEPTH: read from key 'depth'" in repairs and "WEIGHT_DECAY: read from key 'Weight-Decay'" in repairs
    assert all("\n" not in r for r in repairs)
    params, repairs = parse_reply(json.dumps(obj | {"DEPTH": 5}), SPACE)  # the same parameter twice: first wins
    assert params["DEPTH"] == 12 and "DEPTH: ignored a second value 5 (key 'DEPTH')" in repairs


def test_out_of_bounds_clamped_rounded_snapped():
    text = reply(DEPTH=99, MATRIX_LR=5.0, WEIGHT_DECAY=-1, ASPECT_RATIO=63.6, HEAD_DIM=100, TOTAL_BATCH_SIZE=1e9)
    params, repairs = parse_reply(text, SPACE)
    SPACE.check(params)
    assert params == DEFAULT | {"DEPTH": 24, "MATRIX_LR": 0.2, "WEIGHT_DECAY": 0.0, "ASPECT_RATIO": 64,
                                "HEAD_DIM": 128, "TOTAL_BATCH_SIZE": 2097152}  # fmt: skip
    assert "DEPTH: 99 -> 24 (outside [4, 24])" in repairs
    assert "MATRIX_LR: 5.0 -> 0.2 (outside [0.005, 0.2])" in repairs
    assert "ASPECT_RATIO: 63.6 -> 64 (rounded to an integer)" in repairs
    assert "HEAD_DIM: 100 -> 128 (snapped to a power of two)" in repairs
    assert len(repairs) == 6


def test_unknown_parameter_dropped():
    params, repairs = parse_reply(json.dumps(DEFAULT | {"LEARNING_RATE": 0.1, "notes": "bigger"}), SPACE)
    assert params == DEFAULT
    assert repairs == ["dropped unknown parameter 'LEARNING_RATE'", "dropped unknown parameter 'notes'"]


def test_missing_parameters_filled_from_the_fallback():
    fallback = SPACE.sample(np.random.default_rng(0))
    params, repairs = parse_reply('{"DEPTH": 6, "MATRIX_LR": 0.01}', SPACE, fallback, "CMA-ES's suggestion")
    assert params == fallback | {"DEPTH": 6, "MATRIX_LR": 0.01}
    assert len(repairs) == SPACE.dim - 2
    assert f"HEAD_DIM missing: used {fallback['HEAD_DIM']!r} from CMA-ES's suggestion" in repairs
    params, repairs = parse_reply('{"DEPTH": 6}', SPACE)  # no fallback: the default
    assert params == DEFAULT | {"DEPTH": 6} and "HEAD_DIM missing: used 128 from the default" in repairs


def test_unknown_category_and_non_numbers_replaced():
    fallback = DEFAULT | {"WINDOW_PATTERN": "LLLL", "EMBEDDING_LR": 0.3}
    text = reply(WINDOW_PATTERN="SLX", EMBEDDING_LR="high", DEPTH=None)
    params, repairs = parse_reply(text, SPACE, fallback, "the best configuration")
    assert params == fallback
    assert "WINDOW_PATTERN: unknown choice 'SLX': used 'LLLL' from the best configuration" in repairs
    assert "EMBEDDING_LR: 'high' is not a number: used 0.3 from the best configuration" in repairs
    assert "DEPTH: None is not a number: used 8 from the best configuration" in repairs
    params, repairs = parse_reply(reply(WINDOW_PATTERN="llll"), SPACE)  # case only
    assert params["WINDOW_PATTERN"] == "LLLL" and repairs == ["WINDOW_PATTERN: 'llll' -> 'LLLL'"]


def test_small_model_quirks_repaired():
    body = reply(DEPTH=9)
    trailing = body[:-1] + ",}"
    params, repairs = parse_reply(trailing, SPACE)
    assert params["DEPTH"] == 9 and repairs == ["reply JSON repaired (trailing comma)"]
    cut = body[: body.index('"WARMUP_RATIO"') + 10]  # max_tokens hit mid-object
    params, repairs = parse_reply(cut, SPACE, DEFAULT | {"WINDOW_PATTERN": "SSSS"}, "CMA-ES's suggestion")
    assert params["DEPTH"] == 9 and params["WINDOW_PATTERN"] == "SSSS"
    assert "cut short" in repairs[0] and "WARMUP_RATIO missing: used 0.0 from CMA-ES's suggestion" in repairs
    wrapped = json.dumps({"config": DEFAULT | {"DEPTH": 5}, "reason": "smaller"})
    params, repairs = parse_reply(wrapped, SPACE)
    assert params["DEPTH"] == 5 and repairs == ["unwrapped the configuration from key 'config'"]


@pytest.mark.parametrize("text, why", [
    ("", "empty reply"),
    ("I think you should increase the depth.", "no JSON object"),
    ("DEPTH: 12, MATRIX_LR: 0.02", "no JSON object"),
    (json.dumps([DEFAULT]), "list, not an object"),
    ("```json\n[1, 2, 3]\n```", "list, not an object"),
    ("42", "int, not an object"),
    ('{"learning_rate": 0.1, "layers": 12}', "none of the space's parameters"),
    ("{}", "none of the space's parameters"),
])  # fmt: skip
def test_unusable_replies_raise(text, why):
    with pytest.raises(ReplyError) as e:
        parse_reply(text, SPACE)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


# -- prompts ----------------------------------------------------------------------------------------------------------


def with_failures(history):
    """Every 7th trial an OOM with a long allocator message, every 11th a divergence."""
    out = []
    for t in history:
        if t.number and t.number % 7 == 0:
            t = dataclasses.replace(t, status="oom", val_bpb=None,
                                    error="RESOURCE_EXHAUSTED: Out of memory allocating 8589934592 bytes " * 3)
        elif t.number and t.number % 11 == 0:
            t = dataclasses.replace(t, status="diverged", val_bpb=None, error="loss is NaN at step 113")
        out.append(t)
    return out


@pytest.fixture(scope="module")
def long_study():
    p, history, _ = study("cmaes", seed=0, n=200)
    state = p.state_summary() | {"sigma0": p.sigma0}
    return with_failures(history), state


def user_text(messages) -> str:
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[1]["content"]


def table(text: str) -> str:
    """The prompt's table of evaluations, without the earlier failures listed before it."""
    section = text.split("## Evaluations\n", 1)[1].split("\n## ", 1)[0]
    return section[section.index("(oldest first"):]


def shown(text: str) -> list[str]:
    """The trial numbers in the prompt's table of evaluations, in order."""
    return [row.split()[0] for row in table(text).splitlines() if row.startswith("#")]


def test_centaur_prompt_holds_cmaes_state_and_history(long_study):
    history, state = long_study
    suggestion = state["next_suggestion"]
    messages = centaur_prompt(SPACE, state, history, suggestion)
    text = user_text(messages)
    assert text.rstrip().endswith(REPLY_INSTRUCTION)
    for name in SPACE.names:
        assert f"- {name}: " in text  # the search space
        assert f"- {name} = " in text  # the mean, decoded
        assert f" {name}: " in text  # a covariance row
    decoded_mean = SPACE.from_unit(np.clip(list(state["mean"].values()), 0, 1))
    assert f"- DEPTH = {decoded_mean['DEPTH']} (unit {state['mean']['DEPTH']:.2f}" in text
    assert f"sigma = {state['sigma']:.3f}" in text and "Covariance matrix C" in text
    assert json.dumps(suggestion["WINDOW_PATTERN"]) in text and "next suggestion" in text
    assert "Top 5 trials" in text
    best = min((t for t in history if not t.failed), key=lambda t: t.val_bpb)
    assert f"#{best.number} cmaes {best.val_bpb:.4f} | " in text and f"Trial #{best.number}, val_bpb" in text
    # the last 20 trials, in order (an older one may still be shown among the top 5: only this section counts)
    assert shown(text) == [f"#{n}" for n in range(180, 200)] and "(oldest first; 180 earlier trials not shown)" in text
    assert "FAILED oom (RESOURCE_EXHAUSTED: Out of memory" in text  # failure reasons
    assert "FAILED diverged (loss is NaN at step 113)" in text
    assert "Earlier failures" in text
    assert "exploit" in text and "prior knowledge" in text and "away from regions where trials failed" in text
    # Room to spare: CPUs differ in the last digits of this CMA-ES run, which moves the size by a few tokens.
    assert estimate_tokens(messages) < 0.85 * MAX_PROMPT_TOKENS


def test_llm_prompt_holds_history_and_best(long_study):
    history, _ = long_study
    messages = llm_prompt(SPACE, history)
    text = user_text(messages)
    assert text.rstrip().endswith(REPLY_INSTRUCTION)
    assert all(f"- {n}: " in text for n in SPACE.names)
    assert shown(text) == [f"#{n}" for n in range(180, 200)] and "FAILED oom (" in text
    best = min((t for t in history if not t.failed), key=lambda t: t.val_bpb)
    assert f"Trial #{best.number}, val_bpb {best.val_bpb:.4f}" in text
    assert estimate_tokens(messages) < 0.85 * MAX_PROMPT_TOKENS
    # the first ask of a study: only the default has run
    first = user_text(llm_prompt(SPACE, history[:1]))
    assert "## Evaluations\n(oldest first)\n" in first and shown(first) == ["#0"] and "\n#0 default " in first


@pytest.mark.parametrize("prompt", ["llm", "centaur"])
def test_consecutive_prompts_share_their_start_up_to_the_new_rows(long_study, prompt):
    """A server that keeps the previous prompt (llama.cpp) reads only what follows the common start: for turns
    a window apart that is the new rows and what comes after them, not the whole table again."""
    history, state = long_study

    def text(n: int) -> str:
        if prompt == "llm":
            return user_text(llm_prompt(SPACE, history[:n]))
        return user_text(centaur_prompt(SPACE, state, history[:n], state["next_suggestion"]))

    for earlier, later in ((150, 151), (150, 153), (150, 159)):  # one window: trials 130 on
        a, b = text(earlier), text(later)
        assert shown(a)[0] == shown(b)[0] == "#130" and len(shown(b)) == later - 130
        end_of_rows = a.index(table(a)) + len(table(a))
        assert b[:end_of_rows] == a[:end_of_rows]
    assert shown(text(160))[0] == "#140"  # the next window: 20 rows again


def longest_printed(p) -> object:
    """The value of `p` whose prompt text is longest (e.g. 0.000506 rather than 0.002)."""
    values = list(p.levels) if p.levels is not None else [p.from_unit(u) for u in np.linspace(0, 1, 401)]
    return max(values, key=lambda v: len(fmt_value(v)))


def test_a_maximized_metric_reaches_the_prompts_under_its_own_name_and_values(long_study):
    """Proposers see a maximized metric negated; the LLM is shown its own values, named, with higher better."""
    history, state = long_study
    accuracy = Objective("accuracy", "maximize", "We tune the UPPER_CASE constants of the training script t.py. "
                         "Each trial runs it")  # fmt: skip
    best = min((t for t in history if not t.failed), key=lambda t: t.val_bpb)
    for shown, messages in ((history, llm_prompt(SPACE, history, objective=accuracy)),
                            (history, centaur_prompt(SPACE, state, history, state["next_suggestion"], objective=accuracy)),
                            (history[:5], warmstart_prompt(SPACE, 3, history[:5], accuracy))):  # fmt: skip
        text = user_text(messages)
        assert "Each trial runs it and reports accuracy: higher is better." in text and "val_bpb" not in text
        last = next(t for t in reversed(shown) if not t.failed)
        assert "trial proposer accuracy | " in text and f"#{last.number} {last.proposer} {-last.val_bpb:.4f} | " in text
        assert f" {last.val_bpb:.4f} " not in text  # never the negated value the proposers see
    assert f"Trial #{best.number}, accuracy {-best.val_bpb:.4f}" in user_text(llm_prompt(SPACE, history,
                                                                                         objective=accuracy))
    assert "reach a higher accuracy than the best" in user_text(llm_prompt(SPACE, history, objective=accuracy))


def test_the_worst_case_prompts_still_show_20_evaluations():
    # Built by hand, not by a run, so it is the same on every CPU: every value at its longest, trials of which
    # all but the default and five failed with reasons longer than the prompt shows, a dense covariance matrix
    # (210 trials, cut at 200 and 209).
    worst = {p.name: longest_printed(p) for p in SPACE.params}
    history = [record(0, DEFAULT, 1.2345678, "default")]
    for n in range(1, 210):
        failed = record(n, worst, None, "llm→fallback", status="oom")
        history.append(dataclasses.replace(failed, error="RESOURCE_EXHAUSTED: Out of memory allocating " * 5))
    for n in (3, 5, 7, 9, 11):
        history[n] = record(n, worst, 1.2345678, "cmaes")
    d = SPACE.dim
    state = {"names": list(SPACE.names), "mean": dict.fromkeys(SPACE.names, 0.123456), "sigma": 0.123456,
             "generation": 123, "covariance": 0.5 * np.eye(d) - 0.123456, "sigma0": 0.25}  # fmt: skip
    for n in (200, 209):  # the fewest and the most rows a window of 20 holds (see prompt._window_start)
        for messages in (centaur_prompt(SPACE, state, history[:n], worst), llm_prompt(SPACE, history[:n])):
            assert len(shown(user_text(messages))) >= RECENT == 20
            assert estimate_tokens(messages) <= MAX_PROMPT_TOKENS


def test_prompts_shrink_to_a_token_budget(long_study):
    history, state = long_study
    full = centaur_prompt(SPACE, state, history, state["next_suggestion"])
    small = centaur_prompt(SPACE, state, history, state["next_suggestion"], max_tokens=4500)
    assert estimate_tokens(small) <= 4500 < estimate_tokens(full)
    assert len(shown(user_text(small))) < 20 and "Top 5 trials" in user_text(small)
    assert user_text(small).rstrip().endswith(REPLY_INSTRUCTION)
    tiny = centaur_prompt(SPACE, state, history, state["next_suggestion"], max_tokens=100)  # over budget
    assert shown(user_text(tiny)) == ["#199"] and "Covariance matrix C" in user_text(tiny)  # still complete


def test_prompts_for_a_fresh_study():
    history = [record(0, DEFAULT, objective(DEFAULT), "default")]
    p = CMAESProposer(SPACE, seed=0)
    p.tell(history[0])
    state = p.state_summary()
    text = user_text(centaur_prompt(SPACE, state, history, state["next_suggestion"]))
    assert "\n#0 default " in text and "sigma = 0.250" in text
    failed = [record(0, DEFAULT, None, "default")]
    text = user_text(llm_prompt(SPACE, failed))
    assert "No trial has succeeded yet" in text and "FAILED oom" in text
