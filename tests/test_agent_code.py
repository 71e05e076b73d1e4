"""method=agent_code: the LLM's edited trainer runs from its trial folder (never the installed package) after a check
that it parses, imports and builds; failed checks are crashed trials whose errors the next prompt shows; the journal
keeps each edit's diff and hash; hill-climbing from the best edit. With a scripted OpenAI-compatible server on
loopback (known-good and broken replies) and with the embedded SmolLM2 server."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jaxhpo import source
from jaxhpo.journal import Journal
from jaxhpo.proposers import make_proposer
from jaxhpo.proposers.agent_code import FALLBACK, parse_reply
from jaxhpo.space import Space
from tests.conftest import REPO, run_cli
from tests.llm_server import llm_missing
from tests.test_proposers import SPACE, record
from tests.test_study import study_args

BASE = source.base_model_text()
# A real change: MLPs half as wide, the module and the parameter formula alike (the trainer reports num_params).
HALF_WIDTH = "    return max(1, round(cfg.mlp_ratio * cfg.model_dim / 2))"
HALF_MLP = BASE.replace("    return max(1, round(cfg.mlp_ratio * cfg.model_dim))", HALF_WIDTH)


def tiny() -> Space:
    return Space.from_file(REPO / "hydra_configs/space/tiny.yaml")


def reply(description: str, text: str) -> str:
    return f"DESCRIPTION: {description}\n```python\n{text}```\n"


def test_the_edited_source_round_trips_and_bad_edits_say_why():
    params = SPACE.default() | {"DEPTH": 6}
    text = source.editable(SPACE, params, BASE)
    assert source.split(text, SPACE) == (params, BASE)
    given, model_text = source.split(text.replace("DEPTH = 6", "DEPTH = 10"), SPACE)
    assert given["DEPTH"] == 10 and model_text == BASE
    for broken, why in ((text.replace(source.MODEL_MARK, "# the model"), "lost its"),
                        (text.replace("DEPTH = 6", "DEPTH = 6 +"), "training constants: invalid syntax"),
                        (text.replace("def rms_norm(", "def rms_norm(("), "model/gpt.py: ")):  # fmt: skip
        with pytest.raises(source.SourceError, match=why):
            source.split(broken, SPACE)
    assert parse_reply(reply("wider", "X = 1\n")) == ("wider", "X = 1\n")
    with pytest.raises(source.SourceError, match="no ```python code block"):
        parse_reply("DESCRIPTION: I would make it deeper.")
    edit = source.describe(HALF_MLP, BASE)
    assert edit["sha256"] == hashlib.sha256(HALF_MLP.encode()).hexdigest()
    assert "-    return max(1, round(cfg.mlp_ratio * cfg.model_dim))" in edit["diff"] and "+" + HALF_WIDTH in edit["diff"]


def test_hill_climbing_keeps_the_best_edit_and_shows_every_result():
    class Scripted:
        cfg = None

        def __init__(self, *replies):
            self.replies, self.prompts, self.formats = list(replies), [], []

        def chat(self, messages, schema=None, **kw):
            from jaxhpo.llm.client import Completion

            self.prompts.append(messages[-1]["content"])
            return Completion(self.replies.pop(0), 0.01, 10, 10, "scripted", 1)

    d = SPACE.default()
    llm = Scripted(reply("half-width MLP", source.editable(SPACE, d, HALF_MLP)),
                   reply("deeper", source.editable(SPACE, d | {"DEPTH": 12}, BASE)), "no code at all")  # fmt: skip
    p = make_proposer("agent_code", SPACE, 0, llm=llm)
    p.tell(record(0, d, 1.0, "default"))
    first = p.ask([])
    assert first.proposer == "agent_code" and first.meta["agent"]["text"] == HALF_MLP and first.params == d
    p.tell(record(1, first.params, 0.9, "agent_code", meta=first.meta))  # better: kept
    second = p.ask([])
    assert "[KEPT] half-width MLP -> val_bpb=0.9000" in llm.prompts[1] and "model_dim / 2" in llm.prompts[1]
    p.tell(record(2, second.params, 1.2, "agent_code", meta=second.meta))  # worse: reverted
    third = p.ask([])
    assert "[REVERTED] deeper -> val_bpb=1.2000" in llm.prompts[2] and "model_dim / 2" in llm.prompts[2]
    assert third.meta["agent"]["error"] == "the reply holds no ```python code block"
    assert third.meta["llm_turn"]["fallback"].startswith("unusable source")
    # replay from the journal's records alone: the same best source
    q = make_proposer("agent_code", SPACE, 0)
    for r in (record(0, d, 1.0, "default"), record(1, first.params, 0.9, "agent_code", meta=first.meta)):
        q.tell(r)
    assert q.best == p.best
    # no LLM: the best source with a seeded random configuration
    fallback = q.ask([])
    assert fallback.proposer == FALLBACK and fallback.meta["agent"]["text"] == HALF_MLP


def test_the_surrogate_has_no_source_to_edit(tmp_path):
    proc = run_cli("jaxhpo", "+method=agent_code", "trainer=surrogate", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: method agent_code edits the built-in trainer's source, "
                                                    "and trainer=surrogate has none: use trainer=gpt")  # fmt: skip


class ScriptedServer:
    """An OpenAI-compatible chat server on loopback that answers from a list of replies and keeps the prompts."""

    def __init__(self, replies):
        self.replies, self.prompts, self.formats = list(replies), [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"data": [{"id": "scripted"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.prompts.append(body["messages"][-1]["content"])
                outer.formats.append(body.get("response_format"))
                text = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                self._send({"model": "scripted", "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": 50}})  # fmt: skip

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()


def test_a_study_runs_each_edit_from_its_trial_folder_and_shows_failed_checks(tmp_path, data_cache):
    d = tiny().default()
    breaks_at_build = BASE.replace("    def __call__(self, idx: jax.Array) -> jax.Array:",
                                   "    def __call__(self, idx: jax.Array) -> jax.Array:\n"
                                   "        raise RuntimeError('no forward pass today')")  # fmt: skip
    replies = [reply("half-width MLP", source.editable(tiny(), d, HALF_MLP)),
               reply("broken", source.editable(tiny(), d, BASE).replace("def rms_norm(", "def rms_norm((")),
               reply("no forward", source.editable(tiny(), d, breaks_at_build))]  # fmt: skip
    with ScriptedServer(replies) as server:
        proc = run_cli("jaxhpo", *study_args("agent_code", tmp_path, data_cache, "study.max_trials=4", "llm=openai",
                                             f"llm.base_url={server.url}", "llm.model=scripted", "llm.api_key_env=null"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    assert [t.status for t in trials] == ["ok", "ok", "crashed", "crashed"], [t.error for t in trials]
    edited = trials[1]
    assert edited.meta["agent"]["sha256"] == hashlib.sha256(HALF_MLP.encode()).hexdigest()
    assert HALF_MLP != BASE and "+" + HALF_WIDTH in edited.meta["agent"]["diff"]
    assert (tmp_path / "trials/0001/src/model/gpt.py").read_text() == HALF_MLP
    # it trained the copy: the parameters counted by the edited formula, MLPs of 4 d² per block, not the installed 8 d²
    depth = d["DEPTH"]
    width = d["DEPTH"] * d["ASPECT_RATIO"]
    assert trials[0].result["num_params"] - edited.result["num_params"] == depth * 4 * width * width
    assert trials[2].error.startswith("source check: model/gpt.py: ") and trials[2].wall_seconds == 0.0
    assert trials[3].error == "source check: RuntimeError: no forward pass today"
    assert "[CRASHED] broken -> crashed: source check: model/gpt.py" in server.prompts[2]
    assert server.formats == [None] * 3  # asked for plain text: a JSON grammar could not write a Python block
    # Hill-climbing: the edit is kept, and the next prompt edits it, only if it scored better than the default.
    if edited.val_bpb < trials[0].val_bpb:
        assert "[KEPT] half-width MLP" in server.prompts[1] and "model_dim / 2" in server.prompts[2]
    else:
        assert "[REVERTED] half-width MLP" in server.prompts[1] and "model_dim / 2" not in server.prompts[2]


@pytest.mark.skipif(llm_missing() is not None, reason=str(llm_missing()))
def test_a_study_with_the_embedded_llm(tmp_path, data_cache):
    proc = run_cli("jaxhpo", *study_args("agent_code", tmp_path, data_cache, "study.max_trials=2", "llm.n_ctx=8192"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Journal(tmp_path / "journal.sqlite", readonly=True) as journal:
        trials, turns = journal.trials(), journal.llm_turns()
    edit = trials[1]
    print(edit.proposer, edit.status, edit.error, turns[0]["fallback"], f"{turns[0]['latency_s']:.0f}s",
          turns[0]["completion_tokens"])
    # SmolLM2-135M rarely writes a whole source back: its edit ran, or was refused with a reason, or the LLM failed
    assert len(turns) == 1 and turns[0]["kind"] == "agent_code"
    assert edit.proposer in ("agent_code", FALLBACK)
    assert edit.status == "ok" or edit.error.startswith("source check: ") or edit.proposer == FALLBACK
    assert edit.meta["agent"]["sha256"] and "diff" in edit.meta["agent"]
