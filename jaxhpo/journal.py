"""The study journal: one SQLite row per finished trial, append-only, the source of truth for resuming and reports.

Durability choice: WAL mode with `synchronous=FULL`. With FULL, a commit fsyncs the write-ahead log before
`append` returns, so a finished trial survives `kill -9` (and power loss); an interrupted commit is simply not in
the log's committed part, so the file is never left half-written. WAL rather than the rollback journal because
reports read while the study writes: in WAL readers never block the writer and the writer never blocks readers,
whereas a rollback-journal reader's shared lock would make `append` wait or fail with "database is locked".
(WAL needs shared memory between the processes, so the run folder must be on a local filesystem, not NFS.)

Schema version 5 (`PRAGMA user_version`), identified as ours by `PRAGMA application_id`:

    trials(number INTEGER PRIMARY KEY, params JSON, space_id, method, proposer, status, val_bpb, error,
           wall_seconds, training_seconds, peak_memory_mb, started_at, ended_at, seed, meta JSON, result JSON)
    study(key TEXT PRIMARY KEY, value JSON)
    llm_turns(trial_number -> trials.number, call, kind, prompt, reply, parsed JSON, repairs JSON, fallback,
              latency_s, prompt_tokens, completion_tokens, model, attempts)       -- added in version 2
    pending(number PRIMARY KEY, params JSON, proposer, meta JSON, llm_turn JSON, started_at)  -- version 3

`llm_turns` has one row per LLM call, keyed by (trial_number, call): most methods make one call for a trial
(call 0), LLAMBO many (version 4; before it, one row per trial). Version 5 admits the status `pruned`.

`pending` holds the trials that have started and not finished: a row is written (durably) before a trial's
process starts and deleted in the transaction that appends the finished trial. After a crash or a kill of the
study its rows are the trials that were in flight; a resumed study runs them again, with the same number and
configuration, so nothing is lost and nothing runs twice under two numbers.

An older journal is upgraded in place when opened for writing (`_MIGRATIONS`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import numbers
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("ok", "oom", "diverged", "timeout", "crashed", "pruned")  # pruned: version 5
JOURNAL_FILE = "journal.sqlite"  # a study's journal, in its run folder

SCHEMA_VERSION = 5
APPLICATION_ID = 0x4A485031  # "JHP1": tells our files apart from any other SQLite database

_SCHEMA_TRIALS = f"""
CREATE TABLE trials (
    number INTEGER PRIMARY KEY,
    params TEXT NOT NULL,
    space_id TEXT NOT NULL,
    method TEXT NOT NULL,
    proposer TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    val_bpb REAL,
    error TEXT,
    wall_seconds REAL NOT NULL,
    training_seconds REAL,
    peak_memory_mb REAL,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    seed INTEGER NOT NULL,
    meta TEXT NOT NULL,
    result TEXT NOT NULL
)"""
_SCHEMA_V1 = f"""{_SCHEMA_TRIALS};
CREATE TABLE study (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# One row per LLM call made for a trial's proposal, joined to its trial by number: the prompt and raw reply are
# large and only reports and audits read them, so they stay out of `trials`.
_LLM_TURN_COLUMNS = (
    "trial_number", "call", "kind", "prompt", "reply", "parsed", "repairs", "fallback", "latency_s",
    "prompt_tokens", "completion_tokens", "model", "attempts",
)  # fmt: skip
_LLM_TURN_JSON = ("parsed", "repairs")
_TURN_FIELDS = """
    kind TEXT NOT NULL,
    prompt TEXT NOT NULL,
    reply TEXT,
    parsed TEXT NOT NULL,
    repairs TEXT NOT NULL,
    fallback TEXT,
    latency_s REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    model TEXT,
    attempts INTEGER"""
# Versions 2 and 3: one turn per trial. Version 4: one row per call.
_SCHEMA_LLM_TURNS_V2 = f"""
CREATE TABLE llm_turns (
    trial_number INTEGER PRIMARY KEY REFERENCES trials(number),{_TURN_FIELDS}
)
"""
_SCHEMA_LLM_TURNS = f"""
CREATE TABLE llm_turns (
    trial_number INTEGER NOT NULL REFERENCES trials(number),
    call INTEGER NOT NULL,{_TURN_FIELDS},
    PRIMARY KEY (trial_number, call)
)
"""

_SCHEMA_PENDING = """
CREATE TABLE pending (
    number INTEGER PRIMARY KEY,
    params TEXT NOT NULL,
    proposer TEXT NOT NULL,
    meta TEXT NOT NULL,
    llm_turn TEXT,
    started_at REAL NOT NULL
)
"""

# Migration steps: _MIGRATIONS[v] upgrades a version-v journal to v + 1 inside the opening transaction.
def _calls_per_trial(conn: sqlite3.Connection) -> None:
    """Version 3 -> 4: llm_turns keyed by (trial, call); every earlier turn is its trial's call 0."""
    old = ", ".join(c for c in _LLM_TURN_COLUMNS if c != "call")
    conn.execute("ALTER TABLE llm_turns RENAME TO llm_turns_v3")
    conn.execute(_SCHEMA_LLM_TURNS)
    conn.execute(f"INSERT INTO llm_turns ({', '.join(_LLM_TURN_COLUMNS)}) "
                 f"SELECT trial_number, 0, {old.removeprefix('trial_number, ')} FROM llm_turns_v3")  # fmt: skip
    conn.execute("DROP TABLE llm_turns_v3")


def _pruned_status(conn: sqlite3.Connection) -> None:
    """Version 4 -> 5: `trials` admits the status 'pruned'. SQLite cannot alter a CHECK constraint, so the table
    is made again; llm_turns references it and is made again too, old tables dropped in the order foreign keys
    allow (renaming `trials` points the old llm_turns at the renamed table)."""
    conn.execute("ALTER TABLE llm_turns RENAME TO llm_turns_v4")
    conn.execute("ALTER TABLE trials RENAME TO trials_v4")
    conn.execute(_SCHEMA_TRIALS)
    conn.execute(_SCHEMA_LLM_TURNS)
    conn.execute(f"INSERT INTO trials ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM trials_v4")
    conn.execute(f"INSERT INTO llm_turns ({', '.join(_LLM_TURN_COLUMNS)}) "
                 f"SELECT {', '.join(_LLM_TURN_COLUMNS)} FROM llm_turns_v4")  # fmt: skip
    conn.execute("DROP TABLE llm_turns_v4")
    conn.execute("DROP TABLE trials_v4")


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: lambda conn: conn.execute(_SCHEMA_LLM_TURNS_V2),
    2: lambda conn: conn.execute(_SCHEMA_PENDING),
    3: _calls_per_trial,
    4: _pruned_status,
}

_COLUMNS = (
    "number", "params", "space_id", "method", "proposer", "status", "val_bpb", "error", "wall_seconds",
    "training_seconds", "peak_memory_mb", "started_at", "ended_at", "seed", "meta", "result",
)  # fmt: skip
_JSON_COLUMNS = ("params", "meta", "result")
_INSERT_LLM_TURN = (
    f"INSERT INTO llm_turns ({', '.join(_LLM_TURN_COLUMNS)}) VALUES ({', '.join('?' * len(_LLM_TURN_COLUMNS))})"
)
_INSERT = f"INSERT INTO trials ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
# trials.csv: these lead, then one param_<name> column per hyperparameter, then _CSV_TAIL.
_CSV_HEAD = ("number", "status", "val_bpb")
_CSV_TAIL = (
    "proposer", "method", "space_id", "seed", "wall_seconds", "training_seconds", "peak_memory_mb",
    "started_at", "ended_at", "error",
)  # fmt: skip


class JournalError(RuntimeError):
    """A journal that cannot be opened, read or written; the message is one line."""


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial, as stored in the journal."""

    number: int  # 0, 1, 2, ... (trial 0 is the default configuration)
    params: dict[str, Any]  # hyperparameter name -> value
    space_id: str  # hash of the search space definition
    method: str  # the study's method: "random", "tpe", "cmaes", "llm", "centaur", ...
    proposer: str  # which component proposed this trial: "default", "tpe", "llm→fallback", ...
    status: str  # one of STATUSES
    val_bpb: float | None  # None unless status == "ok"
    error: str | None  # one-line failure message, None when ok
    wall_seconds: float  # whole trial wall time (subprocess start to end)
    training_seconds: float | None
    peak_memory_mb: float | None
    started_at: float  # unix time
    ended_at: float  # unix time
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)  # proposer/trial extras, JSON-serializable
    result: dict[str, Any] = field(default_factory=dict)  # the trainer's full result.json

    @property
    def failed(self) -> bool:
        """True unless the trial trained and was scored."""
        return self.status != "ok"


@dataclass(frozen=True)
class PendingTrial:
    """A trial that has started and not finished: what is needed to run it again after a crash."""

    number: int
    params: dict[str, Any]
    proposer: str
    meta: dict[str, Any] = field(default_factory=dict)
    llm_turn: dict[str, Any] | list | None = None  # the LLM turn (or calls) that proposed it; journaled with the trial
    started_at: float = 0.0


def _json_default(value: Any) -> Any:
    # Proposers hand out numpy scalars/arrays (CMA-ES, TPE); store them as plain numbers and lists.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _encode(name: str, value: Any) -> str:
    try:
        return json.dumps(value, default=_json_default)  # NaN/inf allowed: a diverged result.json may hold them
    except (TypeError, ValueError) as e:
        raise JournalError(f"{name} is not JSON-serializable: {e}") from None


def _dumps(name: str, value: Any) -> str:
    if not isinstance(value, dict):
        raise JournalError(f"{name} must be a dict, got {type(value).__name__}")
    return _encode(name, value)


def _number(name: str, value: Any, *, integer: bool = False, optional: bool = False) -> float | int | None:
    # numbers.Real/Integral also admit numpy scalars, which sqlite3 cannot bind; convert them to Python types.
    if value is None and optional:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise JournalError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    return int(value) if integer else float(value)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise JournalError(f"{name} must be a string, got {value!r}")
    return value


def _row(r: TrialRecord) -> tuple:
    """Validate a record and turn it into the `trials` row, in _COLUMNS order."""
    number = _number("number", r.number, integer=True)
    if number < 0:
        raise JournalError(f"trial number must be >= 0, got {number}")
    if r.status not in STATUSES:
        raise JournalError(f"trial {number}: status {r.status!r} is not one of {', '.join(STATUSES)}")
    val_bpb = _number(f"trial {number}: val_bpb", r.val_bpb, optional=True)
    if r.status == "ok":
        if val_bpb is None or not math.isfinite(val_bpb):
            raise JournalError(f"trial {number}: status 'ok' needs a finite val_bpb, got {r.val_bpb!r}")
        if r.error is not None:
            raise JournalError(f"trial {number}: status 'ok' must have error None, got {r.error!r}")
    else:
        if val_bpb is not None:
            raise JournalError(f"trial {number}: status {r.status!r} must have val_bpb None, got {r.val_bpb!r}")
        if not isinstance(r.error, str) or not r.error:
            raise JournalError(f"trial {number}: status {r.status!r} needs an error message, got {r.error!r}")
    return (
        number,
        _dumps("params", r.params),
        _text("space_id", r.space_id),
        _text("method", r.method),
        _text("proposer", r.proposer),
        r.status,
        val_bpb,
        r.error,
        _number("wall_seconds", r.wall_seconds),
        _number("training_seconds", r.training_seconds, optional=True),
        _number("peak_memory_mb", r.peak_memory_mb, optional=True),
        _number("started_at", r.started_at),
        _number("ended_at", r.ended_at),
        _number("seed", r.seed, integer=True),
        _dumps("meta", r.meta),
        _dumps("result", r.result),
    )


def _llm_turn_rows(number: int, turn: dict | list) -> list[tuple]:
    """Validate a trial's LLM turn (a dict) or its calls (a list of them) into rows, numbered by call."""
    calls = turn if isinstance(turn, list) else [turn]
    return [_llm_turn_row(number, call, t) for call, t in enumerate(calls)]


def _llm_turn_row(number: int, call: int, turn: dict) -> tuple:
    """Validate one LLM call (a dict with the _LLM_TURN_COLUMNS but trial_number and call) into its row."""
    if not isinstance(turn, dict):
        raise JournalError(f"trial {number}: llm_turn must be a dict or a list of them, got {type(turn).__name__}")
    unknown = sorted(set(turn) - set(_LLM_TURN_COLUMNS[2:]))
    if unknown:
        raise JournalError(f"trial {number}: llm_turn has unknown field {unknown[0]!r}")
    values = {c: turn.get(c) for c in _LLM_TURN_COLUMNS[2:]}
    values["kind"] = _text(f"trial {number}: llm_turn kind", values["kind"])
    prompt = values["prompt"]
    values["prompt"] = prompt if isinstance(prompt, str) else _encode(f"trial {number}: llm_turn prompt", prompt)
    values["parsed"] = _encode(f"trial {number}: llm_turn parsed", values["parsed"])
    values["repairs"] = _encode(f"trial {number}: llm_turn repairs", values["repairs"] or [])
    values["latency_s"] = _number("llm_turn latency_s", values["latency_s"], optional=True)
    for c in ("prompt_tokens", "completion_tokens", "attempts"):
        values[c] = _number(f"llm_turn {c}", values[c], integer=True, optional=True)
    return (number, call, *values.values())


def low_on_space(folder: str | Path) -> int | None:
    """The bytes left on `folder`'s file system when under 1 MiB (a disk as good as full), else None."""
    with contextlib.suppress(OSError):
        stat = os.statvfs(folder)
        free = stat.f_bavail * stat.f_frsize
        if free < 1 << 20:
            return free
    return None


def _why(e: Exception, path: Path) -> str:
    """An SQLite or OS error, saying "no space left on device" when that is the cause: SQLite reports a full disk
    as "database or disk is full" or only as "disk I/O error", depending on which write failed."""
    full = getattr(e, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
    if full or getattr(e, "errno", None) == errno.ENOSPC:
        if (free := low_on_space(path.parent)) is not None:
            return f"no space left on device ({free // 1024} KiB free in {path.parent}; {e})"
    return str(e)


def _record(row: sqlite3.Row) -> TrialRecord:
    values = {c: row[c] for c in _COLUMNS}
    for c in _JSON_COLUMNS:
        values[c] = json.loads(values[c])
    return TrialRecord(**values)


def _csv_cell(value: Any) -> Any:
    # Strings and numbers as themselves; None as an empty cell; anything else (bool, list) as JSON.
    if value is None:
        return ""
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    return json.dumps(value)


class Journal:
    """The journal file of one study: a single writer (the study) and any number of read-only readers."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        """Open the journal at `path`, creating file and schema if missing (a missing file is an error if readonly)."""
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()  # the study may append from worker threads; one statement at a time
        if readonly and not self.path.is_file():
            raise JournalError(f"no journal at {self.path}")
        try:
            if readonly:
                target, uri = self.path.resolve().as_uri() + "?mode=ro", True
            else:
                target, uri = str(self.path), False
            # isolation_level=None: no implicit transactions, so each write is exactly the BEGIN...COMMIT we issue.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                target, uri=uri, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise JournalError(f"cannot open journal {self.path}: {_why(e, self.path)}") from None
        self._conn.row_factory = sqlite3.Row
        try:
            self._open()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _open(self) -> None:
        """Check the file is a journal (before touching it), then set durability and create or migrate the schema."""
        conn = self._conn
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.OperationalError as e:  # e.g. a read-only folder without the WAL's -shm file
            raise JournalError(f"cannot read journal {self.path}: {_why(e, self.path)}") from None
        except sqlite3.DatabaseError as e:  # "file is not a database"
            raise JournalError(f"{self.path} is not a journal: {e}") from None
        fresh = app_id == 0 and version == 0 and tables == 0  # a new or empty file
        if not fresh and app_id != APPLICATION_ID:
            raise JournalError(f"{self.path} is an SQLite database but not a jaxhpo journal")
        if version > SCHEMA_VERSION:
            raise JournalError(f"{self.path} has journal schema {version}; this jaxhpo reads up to {SCHEMA_VERSION}")
        if self.readonly:
            if fresh:
                raise JournalError(f"{self.path} is an empty file, not a journal")
            self._version = version  # an older journal reads fine: its missing tables read as empty
            return
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent in the file; see the module docstring
            conn.execute("PRAGMA synchronous=FULL")  # per connection: fsync the WAL on every commit
            conn.execute("PRAGMA foreign_keys=ON")  # for later tables that reference trials(number)
            if version < SCHEMA_VERSION:
                with self._transaction():
                    self._migrate()
            self._version = SCHEMA_VERSION
        except sqlite3.Error as e:
            raise JournalError(f"cannot set up journal {self.path}: {_why(e, self.path)}") from None

    def _migrate(self) -> None:
        """Create the schema or upgrade it to SCHEMA_VERSION; runs inside one transaction, so all or nothing."""
        conn = self._conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the write lock
        if version == 0:
            # Not executescript: it would COMMIT the open transaction first.
            for statement in _SCHEMA_V1.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            version = 1
        for v in range(version, SCHEMA_VERSION):
            _MIGRATIONS[v](conn)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error; IMMEDIATE takes the write lock up front."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed: never leave a transaction open
                conn.execute("ROLLBACK")
            raise

    def _live(self, *, write: bool = False) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"journal {self.path} is closed")
        if write and self.readonly:
            raise JournalError(f"journal {self.path} was opened read-only")
        return self._conn

    def append(self, record: TrialRecord, llm_turn: dict | list | None = None) -> None:
        """Store one finished trial (and the LLM turn that proposed it, or its list of LLM calls, if any) and drop
        its pending row, in one transaction; durable on return; an existing number is refused."""
        row = _row(record)
        turns = _llm_turn_rows(row[0], llm_turn) if llm_turn is not None else []
        with self._lock:
            conn = self._live(write=True)
            try:
                with self._transaction():
                    conn.execute(_INSERT, row)  # INSERT, never REPLACE: a finished trial is never overwritten
                    conn.executemany(_INSERT_LLM_TURN, turns)
                    conn.execute("DELETE FROM pending WHERE number = ?", (row[0],))
            except sqlite3.IntegrityError as e:
                if conn.execute("SELECT 1 FROM trials WHERE number = ?", (row[0],)).fetchone():
                    raise JournalError(f"trial {row[0]} is already in journal {self.path}") from None
                raise JournalError(f"trial {row[0]} refused by journal {self.path}: {e}") from None
            except sqlite3.Error as e:
                raise JournalError(f"cannot append trial {row[0]} to {self.path}: {_why(e, self.path)}") from None

    def trials(self) -> list[TrialRecord]:
        """All finished trials, ordered by number."""
        with self._lock:
            conn = self._live()
            try:
                rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM trials ORDER BY number").fetchall()
            except sqlite3.Error as e:
                raise JournalError(f"cannot read journal {self.path}: {_why(e, self.path)}") from None
        return [_record(r) for r in rows]

    def llm_turns(self) -> list[dict]:
        """Every LLM call, ordered by trial number and call, JSON columns decoded."""
        if self._version < 2:  # a version-1 journal opened read-only has no llm_turns table
            return []
        with self._lock:
            conn = self._live()
            try:
                columns = _LLM_TURN_COLUMNS if self._version >= 4 else [
                    "0 AS call" if c == "call" else c for c in _LLM_TURN_COLUMNS]  # a read-only older journal
                rows = conn.execute(
                    f"SELECT {', '.join(columns)} FROM llm_turns ORDER BY trial_number, call"
                ).fetchall()
            except sqlite3.Error as e:
                raise JournalError(f"cannot read journal {self.path}: {_why(e, self.path)}") from None
        return [{c: json.loads(r[c]) if c in _LLM_TURN_JSON else r[c] for c in _LLM_TURN_COLUMNS} for r in rows]

    def next_number(self) -> int:
        """The number of the next trial: one more than any finished or pending trial, or 0 for an empty journal."""
        pending = "UNION ALL SELECT number FROM pending" if self._version >= 3 else ""
        with self._lock:
            conn = self._live()
            try:
                return conn.execute(
                    f"SELECT COALESCE(MAX(number) + 1, 0) FROM (SELECT number FROM trials {pending})"
                ).fetchone()[0]
            except sqlite3.Error as e:
                raise JournalError(f"cannot read journal {self.path}: {_why(e, self.path)}") from None

    def start(self, trial: PendingTrial) -> None:
        """Record a trial as started (durable on return), before its process runs; a number already finished or
        started is refused."""
        number = _number("number", trial.number, integer=True)
        if number < 0:
            raise JournalError(f"trial number must be >= 0, got {number}")
        row = (
            number, _dumps("params", trial.params), _text("proposer", trial.proposer), _dumps("meta", trial.meta),
            None if trial.llm_turn is None else _encode("llm_turn", trial.llm_turn),
            _number("started_at", trial.started_at),
        )  # fmt: skip
        if trial.llm_turn is not None:
            _llm_turn_rows(number, trial.llm_turn)  # refuse now what append would refuse later
        with self._lock:
            conn = self._live(write=True)
            try:
                with self._transaction():
                    if conn.execute("SELECT 1 FROM trials WHERE number = ?", (number,)).fetchone():
                        raise JournalError(f"trial {number} is already finished in journal {self.path}")
                    conn.execute(
                        "INSERT INTO pending (number, params, proposer, meta, llm_turn, started_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", row,
                    )  # fmt: skip
            except sqlite3.IntegrityError:
                raise JournalError(f"trial {number} is already pending in journal {self.path}") from None
            except sqlite3.Error as e:
                raise JournalError(f"cannot start trial {number} in {self.path}: {_why(e, self.path)}") from None

    def pending(self) -> list[PendingTrial]:
        """Trials started and not finished (in flight, or interrupted by a crash), ordered by number."""
        if self._version < 3:
            return []
        with self._lock:
            conn = self._live()
            try:
                rows = conn.execute(
                    "SELECT number, params, proposer, meta, llm_turn, started_at FROM pending ORDER BY number"
                ).fetchall()
            except sqlite3.Error as e:
                raise JournalError(f"cannot read journal {self.path}: {_why(e, self.path)}") from None
        return [
            PendingTrial(r["number"], json.loads(r["params"]), r["proposer"], json.loads(r["meta"]),
                         None if r["llm_turn"] is None else json.loads(r["llm_turn"]), r["started_at"])
            for r in rows
        ]  # fmt: skip

    def set_study_info(self, info: dict) -> None:
        """Store study-level metadata; the given keys are replaced, other keys kept."""
        if not isinstance(info, dict) or not all(isinstance(k, str) for k in info):
            raise JournalError("study info must be a dict with string keys")
        items = [(k, _encode(f"study info {k!r}", v)) for k, v in info.items()]
        with self._lock:
            conn = self._live(write=True)
            try:
                with self._transaction():
                    conn.executemany("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)", items)
            except sqlite3.Error as e:
                raise JournalError(f"cannot write study info to {self.path}: {_why(e, self.path)}") from None

    def study_info(self) -> dict:
        """The study-level metadata, {} if never set."""
        with self._lock:
            conn = self._live()
            try:
                rows = conn.execute("SELECT key, value FROM study ORDER BY rowid").fetchall()
            except sqlite3.Error as e:
                raise JournalError(f"cannot read journal {self.path}: {_why(e, self.path)}") from None
        return {key: json.loads(value) for key, value in rows}

    def export_csv(self, path: str | Path) -> None:
        """Write trials.csv (one row per trial, one param_<name> column per hyperparameter), atomically."""
        trials = self.trials()
        names = list(dict.fromkeys(name for t in trials for name in t.params))  # first-seen order
        header = [*_CSV_HEAD, *(f"param_{n}" for n in names), *_CSV_TAIL]
        path = Path(path)
        # Write a sibling temp file and os.replace it over the target: readers see the old or the new file, whole.
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as e:
            raise JournalError(f"cannot write {path}: {_why(e, self.path)}") from None
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(header)
                for t in trials:
                    writer.writerow(
                        [_csv_cell(getattr(t, c)) for c in _CSV_HEAD]
                        + [_csv_cell(t.params.get(n)) for n in names]
                        + [_csv_cell(getattr(t, c)) for c in _CSV_TAIL]
                    )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise JournalError(f"cannot write {path}: {_why(e, self.path)}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def close(self) -> None:
        """Close the connection; further calls raise JournalError. Closing twice is fine."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}{', readonly=True' if self.readonly else ''})"
