"""The study journal on real SQLite files: round trips, refusals, CSV export, and durability under kill -9."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from jaxhpo.journal import STATUSES, Journal, JournalError, PendingTrial, TrialRecord

REPO = Path(__file__).resolve().parents[1]


def record(number: int, status: str = "ok", **changes) -> TrialRecord:
    """A plausible finished trial; failed statuses get no val_bpb and an error message."""
    ok = status == "ok"
    base = TrialRecord(
        number=number,
        params={"DEPTH": 4 + number % 5, "MATRIX_LR": 0.01 * (number + 1), "WINDOW_PATTERN": "SSSL"},
        space_id="space-abc123",
        method="tpe",
        proposer="default" if number == 0 else "tpe",
        status=status,
        val_bpb=1.0 + number / 1000 if ok else None,
        error=None if ok else f"{status}: something went wrong in trial {number}",
        wall_seconds=12.5 + number,
        training_seconds=10.0 if ok else None,
        peak_memory_mb=2048.0 + number if ok else None,
        started_at=1_700_000_000.0 + 20 * number,
        ended_at=1_700_000_012.5 + 20 * number,
        seed=1234 + number,
        meta={"repairs": ["DEPTH clipped"], "predicted_oom": False},
        result={"val_bpb": 1.0 + number / 1000, "steps": 100, "history": [[1, 2.5], [2, 2.25]]} if ok else {},
    )
    return replace(base, **changes)


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_round_trip_order_and_next_number(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        assert j.trials() == [] and j.next_number() == 0 and j.study_info() == {}
        records = [record(0), record(2, "oom"), record(1, "diverged"), record(3, "timeout"), record(4, "crashed")]
        for r in records:  # appended out of order; read back ordered by number
            j.append(r)
        assert j.trials() == sorted(records, key=lambda r: r.number)
        assert j.next_number() == 5
        assert [t.failed for t in j.trials()] == [False, True, True, True, True]
    with Journal(path) as j:  # reopening keeps everything, types included
        back = j.trials()
        assert back == sorted(records, key=lambda r: r.number)
        assert isinstance(back[0].params["DEPTH"], int) and isinstance(back[0].params["MATRIX_LR"], float)
        j.append(record(10))
        assert j.next_number() == 11


def test_numpy_values_are_stored_as_plain_python(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        params = {"DEPTH": np.int64(8), "LR": np.float64(0.04)}
        j.append(record(0, params=params, val_bpb=np.float32(1.5), seed=np.int32(7)))
        t = j.trials()[0]
        assert t.params == {"DEPTH": 8, "LR": 0.04} and type(t.params["DEPTH"]) is int
        assert t.val_bpb == 1.5 and t.seed == 7


def test_study_info_round_trip(tmp_path):
    path = tmp_path / "journal.sqlite"
    info = {"method": "cmaes", "space_id": "abc", "space": {"DEPTH": {"type": "int", "low": 2, "high": 12}}, "seed": 3}
    with Journal(path) as j:
        j.set_study_info(info)
        assert j.study_info() == info
        j.set_study_info({"seed": 4, "config": {"trials": 20}})  # replaces given keys, keeps the others
    with Journal(path, readonly=True) as j:
        assert j.study_info() == {**info, "seed": 4, "config": {"trials": 20}}


def test_readonly_sees_writer_rows_and_cannot_write(tmp_path):
    path = tmp_path / "journal.sqlite"
    with pytest.raises(JournalError, match="no journal"):
        Journal(path, readonly=True)
    with Journal(path) as writer:
        writer.append(record(0))
        with Journal(path, readonly=True) as reader:
            assert [t.number for t in reader.trials()] == [0]
            writer.append(record(1))  # the reader is open: the writer is not blocked, and the reader sees the row
            assert [t.number for t in reader.trials()] == [0, 1] and reader.next_number() == 2
            with pytest.raises(JournalError, match="read-only"):
                reader.append(record(2))
            with pytest.raises(JournalError, match="read-only"):
                reader.set_study_info({"x": 1})
        writer.append(record(2))
    with Journal(path, readonly=True) as reader:  # after the writer closed
        assert reader.next_number() == 3
    with pytest.raises(JournalError, match="closed"):
        reader.trials()


def test_duplicate_number_is_refused_and_original_kept(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        j.append(record(0))
        with pytest.raises(JournalError, match="trial 0 is already in") as e:
            j.append(record(0, val_bpb=0.5))
        assert "\n" not in str(e.value)
        assert j.trials() == [record(0)]
        j.append(record(1))  # the refused append left no transaction open


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(status="finished"), "status 'finished' is not one of"),
        (dict(val_bpb=None), "needs a finite val_bpb"),
        (dict(val_bpb=float("nan")), "needs a finite val_bpb"),
        (dict(error="oops"), "must have error None"),
        (dict(status="oom", error="out of memory"), "must have val_bpb None"),
        (dict(status="crashed", val_bpb=None, error=None), "needs an error message"),
        (dict(number=-1), "trial number must be >= 0"),
        (dict(number=1.5), "number must be an integer"),
        (dict(wall_seconds="long"), "wall_seconds must be a number"),
        (dict(params={"DEPTH": object()}), "params is not JSON-serializable"),
        (dict(meta=["not", "a", "dict"]), "meta must be a dict"),
    ],
)
def test_invalid_records_are_refused(tmp_path, bad, match):
    with Journal(tmp_path / "journal.sqlite") as j:
        with pytest.raises(JournalError, match=match) as e:
            j.append(replace(record(0), **bad))
        assert "\n" not in str(e.value)
        assert j.trials() == []


def test_schema_and_pragmas(tmp_path):
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"trials", "study", "llm_turns", "pending"}
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK constraint backs up the Python validation
            row = (0, "{}", "s", "m", "p", "weird", None, None, 1.0, None, None, 0.0, 1.0, 0, "{}", "{}")
            conn.execute(f"INSERT INTO trials VALUES ({', '.join('?' * len(row))})", row)
    assert STATUSES == ("ok", "oom", "diverged", "timeout", "crashed", "pruned")


def test_non_journal_files_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a database, just some notes\n" * 10)
    for readonly in (False, True):
        with pytest.raises(JournalError, match="not a journal") as e:
            Journal(text, readonly=readonly)
        assert "\n" not in str(e.value)
    assert text.read_text().startswith("this is not a database")

    other = tmp_path / "other.db"  # someone else's SQLite database is left untouched (not even switched to WAL)
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE foo (x)")
    with pytest.raises(JournalError, match="not a jaxhpo journal"):
        Journal(other)
    with sqlite3.connect(other) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    with pytest.raises(JournalError, match="cannot open journal"):
        Journal(tmp_path / "no-such-dir" / "journal.sqlite")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_export_csv(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        j.append(record(0))
        j.append(record(1, "oom", params={"DEPTH": 12, "MATRIX_LR": 0.2, "WINDOW_PATTERN": "L", "ROPE": True}))
        j.append(record(2, proposer="llm→fallback", params={"DEPTH": 6, "MATRIX_LR": 0.03, "WINDOW_PATTERN": "SL,x"}))
        out = tmp_path / "trials.csv"
        j.export_csv(out)
    with open(out, encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    assert header == [
        "number", "status", "val_bpb",
        "param_DEPTH", "param_MATRIX_LR", "param_WINDOW_PATTERN", "param_ROPE",
        "proposer", "method", "space_id", "seed", "wall_seconds", "training_seconds", "peak_memory_mb",
        "started_at", "ended_at", "error",
    ]  # fmt: skip
    rows = read_csv(out)
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["status"] == "ok" and float(rows[0]["val_bpb"]) == record(0).val_bpb
    assert rows[0]["param_DEPTH"] == "4" and float(rows[0]["param_MATRIX_LR"]) == 0.01
    assert rows[0]["param_ROPE"] == "" and rows[0]["error"] == ""  # missing param and None are empty cells
    assert rows[1]["val_bpb"] == "" and rows[1]["param_ROPE"] == "true" and rows[1]["error"] == record(1, "oom").error
    assert rows[2]["param_WINDOW_PATTERN"] == "SL,x" and rows[2]["proposer"] == "llm→fallback"
    assert float(rows[2]["started_at"]) == record(2).started_at and rows[2]["seed"] == "1236"


def test_export_csv_replaces_atomically(tmp_path):
    out = tmp_path / "trials.csv"
    out.write_text("old,partial")
    with Journal(tmp_path / "journal.sqlite") as j:
        for n in range(150):
            j.append(record(n, error=None, meta={"note": "y" * 300}))
        j.export_csv(out)
        assert len(read_csv(out)) == 150
        # A reader polling the file while it is re-exported must always find it whole (150 rows), never truncated.
        seen, stop = [], threading.Event()

        def poll():
            while True:  # read at least once, and record failures instead of dying silently
                try:
                    seen.append(len(read_csv(out)))
                except Exception as e:
                    seen.append(repr(e))
                if stop.is_set():
                    return

        reader = threading.Thread(target=poll)
        reader.start()
        try:
            inodes = set()
            for _ in range(12):
                j.export_csv(out)
                inodes.add(os.stat(out).st_ino)
        finally:
            stop.set()
            reader.join()
        assert seen and set(seen) == {150}
        assert len(inodes) > 1  # replaced by a new file each time, not rewritten in place
        with pytest.raises(JournalError, match="cannot write"):
            j.export_csv(tmp_path / "no-such-dir" / "trials.csv")
    assert sorted(p.name for p in tmp_path.iterdir() if "trials.csv" in p.name) == ["trials.csv"]  # no temp files left


# The child appends trials as fast as it can and prints each number once `append` has returned.
WRITER = """
import sys
from jaxhpo.journal import Journal, TrialRecord
j = Journal(sys.argv[1])
while True:
    n = j.next_number()
    j.append(TrialRecord(
        number=n, params={"DEPTH": n % 12, "MATRIX_LR": n / 7, "WINDOW_PATTERN": "SSSL"}, space_id="s", method="random",
        proposer="random", status="ok", val_bpb=1.0 + n, error=None, wall_seconds=1.0, training_seconds=0.5,
        peak_memory_mb=10.0, started_at=0.0, ended_at=1.0, seed=n, meta={"n": n},
        result={"history": [[i, float(i) / (n + 1)] for i in range(500)], "pad": "x" * (3000 + 997 * (n % 11))},
    ))
    print(n, flush=True)
"""


def start_writer(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def check_after_kill(path: Path, printed: list[int]) -> int:
    """The journal holds every acknowledged trial exactly once, decodes, is intact, and takes the next append."""
    assert integrity(path) == "ok"
    with Journal(path) as j:
        numbers = [t.number for t in j.trials()]
        assert numbers == list(range(len(numbers)))  # each exactly once, no gaps
        assert set(printed) <= set(numbers)
        for t in j.trials():
            if t.method == "random":  # written by the child, not by an earlier check_after_kill
                assert t.val_bpb == 1.0 + t.number and t.meta == {"n": t.number} and len(t.result["history"]) == 500
        nxt = j.next_number()
        assert nxt == len(numbers)
        j.append(record(nxt))
        assert j.next_number() == nxt + 1
    return nxt + 1


def test_kill_9_loses_no_acknowledged_trial(tmp_path):
    path = tmp_path / "journal.sqlite"
    expected_start = 0
    # Three rounds on the same journal, each killed at a different moment: right after an acknowledged append,
    # or a little (1.3 ms, 4 ms) into the next write; each round's child continues where the last one stopped.
    for count, delay in [(30, 0.0), (7, 0.0013), (45, 0.004)]:
        proc = start_writer(path)
        printed = []
        deadline = time.monotonic() + 30
        try:
            while len(printed) < count:
                line = proc.stdout.readline()
                assert line, f"writer died: {proc.stderr.read()}"
                printed.append(int(line))
                assert time.monotonic() < deadline, "writer too slow"
            if delay:
                time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        assert printed[0] == expected_start  # the child continued where the journal left off
        expected_start = check_after_kill(path, printed)


def test_kill_9_during_creation_leaves_an_openable_journal(tmp_path):
    for i, delay in enumerate([0.05, 0.08, 0.11, 0.15]):  # around import and schema creation in the child
        path = tmp_path / f"journal-{i}.sqlite"
        proc = start_writer(path)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        check_after_kill(path, [])


TURN = {
    "kind": "centaur", "prompt": [{"role": "user", "content": "Reply with JSON only."}], "reply": '{"DEPTH": 99}',
    "parsed": {"DEPTH": 8}, "repairs": ["DEPTH: 99 -> 8"], "fallback": None, "latency_s": 0.8,
    "prompt_tokens": 812, "completion_tokens": 40, "model": "SmolLM2-135M-Instruct", "attempts": 1,
}


def test_llm_turns_are_stored_with_their_trial_and_read_back(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        j.append(record(0))
        j.append(record(1, proposer="llm"), llm_turn=TURN)
        j.append(record(2, proposer="llm→fallback"), llm_turn={**TURN, "reply": None, "parsed": None,
                                                                "repairs": [], "fallback": "LLMError: refused"})
        turns = j.llm_turns()
    assert [t["trial_number"] for t in turns] == [1, 2]
    assert turns[0]["parsed"] == {"DEPTH": 8} and turns[0]["repairs"] == ["DEPTH: 99 -> 8"]
    assert '"Reply with JSON only."' in turns[0]["prompt"]  # messages stored as JSON text
    assert turns[1]["fallback"] == "LLMError: refused" and turns[1]["reply"] is None


def test_a_trial_may_have_many_llm_calls(tmp_path):
    calls = [{**TURN, "kind": "llambo-sampler"}] + [{**TURN, "kind": "llambo-scorer", "reply": f"## {i} ##"}
                                                     for i in range(3)]  # fmt: skip
    with Journal(tmp_path / "journal.sqlite") as j:
        j.append(record(0))
        j.append(record(1, proposer="llambo"), llm_turn=calls)
        j.append(record(2, proposer="llm"), llm_turn=TURN)
        turns = j.llm_turns()
    assert [(t["trial_number"], t["call"], t["kind"]) for t in turns] == [
        (1, 0, "llambo-sampler"), (1, 1, "llambo-scorer"), (1, 2, "llambo-scorer"), (1, 3, "llambo-scorer"),
        (2, 0, "centaur")]  # fmt: skip
    assert turns[3]["reply"] == "## 2 ##"


def test_a_version_3_journal_keeps_its_turns_as_call_0(tmp_path):
    from jaxhpo.journal import _INSERT, _SCHEMA_LLM_TURNS_V2, _SCHEMA_PENDING, _SCHEMA_V1, APPLICATION_ID, _row

    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_V1 + ";" + _SCHEMA_LLM_TURNS_V2 + ";" + _SCHEMA_PENDING)
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute("PRAGMA user_version=3")
        conn.execute(_INSERT, _row(record(0)))
        conn.execute("INSERT INTO llm_turns (trial_number, kind, prompt, parsed, repairs) "
                     "VALUES (0, 'llm', '[]', 'null', '[]')")  # fmt: skip
    with Journal(path, readonly=True) as j:  # a reader takes it as it is
        assert [(t["trial_number"], t["call"]) for t in j.llm_turns()] == [(0, 0)]
    with Journal(path) as j:  # a writer upgrades it
        j.append(record(1), llm_turn=[TURN, TURN])
        assert [(t["trial_number"], t["call"]) for t in j.llm_turns()] == [(0, 0), (1, 0), (1, 1)]


def test_a_version_4_journal_learns_the_status_pruned(tmp_path):
    from jaxhpo.journal import _INSERT, _SCHEMA_LLM_TURNS, _SCHEMA_PENDING, _SCHEMA_V1, APPLICATION_ID, _row

    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as conn:  # version 4's CHECK constraint knew five statuses
        conn.executescript(_SCHEMA_V1.replace(", 'pruned'", "") + ";" + _SCHEMA_LLM_TURNS + ";" + _SCHEMA_PENDING)
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute("PRAGMA user_version=4")
        conn.execute(_INSERT, _row(record(0)))
        conn.execute("INSERT INTO llm_turns (trial_number, call, kind, prompt, parsed, repairs) "
                     "VALUES (0, 0, 'llm', '[]', 'null', '[]')")  # fmt: skip
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(_INSERT, _row(record(1, "pruned")))
    with Journal(path) as j:  # a writer upgrades it, keeping what it held
        j.append(record(1, "pruned"), llm_turn=TURN)
        assert [t.status for t in j.trials()] == ["ok", "pruned"]
        assert [t["trial_number"] for t in j.llm_turns()] == [0, 1]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"trials", "study", "llm_turns", "pending"}
        conn.execute("PRAGMA foreign_keys=ON")  # llm_turns still references the trials table, not a dropped one
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO llm_turns (trial_number, call, kind, prompt, parsed, repairs) "
                         "VALUES (7, 0, 'llm', '[]', 'null', '[]')")  # fmt: skip


def test_a_bad_llm_turn_refuses_the_whole_append(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        with pytest.raises(JournalError, match="unknown field 'secret'"):
            j.append(record(0), llm_turn={**TURN, "secret": 1})
        assert j.trials() == [] and j.llm_turns() == []


def test_version_1_journal_is_upgraded_in_place(tmp_path):
    from jaxhpo.journal import _SCHEMA_V1, APPLICATION_ID

    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_V1)
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute("PRAGMA user_version=1")
    with Journal(path, readonly=True) as j:  # readers take an old journal as it is
        assert j.trials() == [] and j.llm_turns() == [] and j.pending() == [] and j.next_number() == 0
    with Journal(path) as j:
        j.start(PendingTrial(0, record(0).params, "default", {}, TURN, 1.0))
        j.append(record(0), llm_turn=TURN)
    with Journal(path, readonly=True) as j:
        assert len(j.trials()) == 1 and len(j.llm_turns()) == 1 and j.pending() == []


def test_pending_trials_are_kept_until_they_finish(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        j.append(record(0))
        started = [PendingTrial(n, record(n).params, "tpe", {"worker": n}, TURN if n == 2 else None, 5.0 + n)
                   for n in (1, 2)]  # fmt: skip
        for p in started:
            j.start(p)
        assert j.next_number() == 3  # pending numbers are taken
        with pytest.raises(JournalError, match="trial 2 is already pending"):
            j.start(started[1])
        with pytest.raises(JournalError, match="trial 0 is already finished"):
            j.start(PendingTrial(0, {}, "tpe"))
        j.append(record(2), llm_turn=TURN)  # trial 2 finishes first
    with Journal(path, readonly=True) as j:  # a crash here: trial 1 is what was in flight
        assert j.pending() == [started[0]]
        assert [t.number for t in j.trials()] == [0, 2] and j.next_number() == 3

