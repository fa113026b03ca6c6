"""The org's records: in memory for fast SOQL, written through to SQLite so they survive a restart.

Every request runs inside `transaction()`, which takes the store's lock (the HTTP server is
threaded; one writer at a time is what a single org row lock would give us anyway) and opens a
SQLite savepoint. Nested `savepoint()`s give per-record rollback for sObject Collections and the
all-or-none rollback of a whole request. Undo is journalled in memory alongside SQLite's own.
"""

import json
import sqlite3
import threading
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sandbox.salesforce import ids, schema

SF_DATETIME = "%Y-%m-%dT%H:%M:%S.{ms:03d}+0000"


def format_datetime(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime(SF_DATETIME).format(ms=moment.microsecond // 1000)


def parse_datetime(text: str) -> datetime:
    """Parses the formats Salesforce accepts: Z, +0000, +00:00, with or without millis."""
    text = text.strip().replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class Store:
    def __init__(self, path: Path):
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, type TEXT, data TEXT);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            """
        )
        self._journals: list[list] = []
        self.after_commit: list = []  # callables run once the outermost transaction commits
        # Called with the outermost transaction's journal once it commits (change capture).
        self.change_listeners: list = []
        self._load()

    def _load(self) -> None:
        self.records: dict[str, dict[str, dict]] = defaultdict(dict)
        self._ext_index: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
        self._last_modstamp = ""
        for record_id, type_name, data in self.db.execute("SELECT id, type, data FROM records"):
            record = json.loads(data)
            self._remember(type_name, record_id, record)
            self._last_modstamp = max(self._last_modstamp, record.get("SystemModstamp") or "")
        self._counters = {
            k: int(json.loads(v))
            for k, v in self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'counter:%'")
        }

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def transaction(self):
        with self.lock, self.savepoint():
            yield self
        self._run_after_commit()

    @contextmanager
    def savepoint(self):
        name = f"sp{len(self._journals)}"
        self.db.execute(f"SAVEPOINT {name}")
        self._journals.append([])
        try:
            yield
        except BaseException:
            self._undo(self._journals.pop())
            self.db.execute(f"ROLLBACK TO {name}")
            self.db.execute(f"RELEASE {name}")
            if not self._journals:
                self.after_commit.clear()
            raise
        journal = self._journals.pop()
        if self._journals:
            self._journals[-1].extend(journal)
        self.db.execute(f"RELEASE {name}")
        if not self._journals:
            for listener in self.change_listeners:
                listener(journal)

    def on_commit(self, action) -> None:
        """Run `action` after the outermost transaction commits (dropped on rollback)."""
        self._journals[-1].append(("after_commit", action))
        self.after_commit.append(action)

    def _undo(self, journal: list) -> None:
        for entry in reversed(journal):
            if entry[0] == "after_commit":
                if entry[1] in self.after_commit:
                    self.after_commit.remove(entry[1])
                continue
            _, type_name, record_id, previous = entry
            self._forget(type_name, record_id)
            if previous is not None:
                self._remember(type_name, record_id, previous)

    def _run_after_commit(self) -> None:
        if self._journals:
            return
        actions, self.after_commit = self.after_commit, []
        for action in actions:
            action()

    # -- records -------------------------------------------------------------------------------

    def get(self, type_name: str, record_id: str) -> dict | None:
        return self.records[type_name].get(record_id)

    def find(self, record_id: str) -> tuple[str, dict] | None:
        """(type name, record) for any id, by its key prefix."""
        sobj = schema.BY_PREFIX.get(record_id[:3])
        record = sobj and self.records[sobj.name].get(record_id)
        return (sobj.name, record) if record else None

    def all(self, type_name: str) -> list[dict]:
        return list(self.records[type_name].values())

    def by_external_id(self, type_name: str, field: str, value: str) -> list[dict]:
        found = self._ext_index[(type_name, field)].get(str(value).lower(), set())
        return [
            self.records[type_name][i]
            for i in sorted(found)
            if not self.records[type_name][i]["IsDeleted"]
        ]

    def put(self, type_name: str, record: dict) -> None:
        record_id = record["Id"]
        previous = self.records[type_name].get(record_id)
        self._journals[-1].append(("put", type_name, record_id, previous))
        self._forget(type_name, record_id)
        self._remember(type_name, record_id, record)
        self.db.execute(
            "INSERT OR REPLACE INTO records (id, type, data) VALUES (?, ?, ?)",
            (record_id, type_name, json.dumps(record)),
        )

    def hard_delete(self, type_name: str, record_id: str) -> None:
        previous = self.records[type_name].get(record_id)
        self._journals[-1].append(("put", type_name, record_id, previous))
        self._forget(type_name, record_id)
        self.db.execute("DELETE FROM records WHERE id = ?", (record_id,))

    def bulk_load(self, rows: list[tuple[str, dict]]) -> None:
        """Seed many records at once (executemany, one transaction). Not journalled."""
        for type_name, record in rows:
            self._remember(type_name, record["Id"], record)
        self.db.executemany(
            "INSERT OR REPLACE INTO records (id, type, data) VALUES (?, ?, ?)",
            [(record["Id"], type_name, json.dumps(record)) for type_name, record in rows],
        )

    def _remember(self, type_name: str, record_id: str, record: dict) -> None:
        self.records[type_name][record_id] = record
        for f in schema.any_sobject(type_name).external_id_fields():
            if record.get(f.name) is not None:
                self._ext_index[(type_name, f.name)][str(record[f.name]).lower()].add(record_id)

    def _forget(self, type_name: str, record_id: str) -> None:
        record = self.records[type_name].pop(record_id, None)
        if record is None:
            return
        for f in schema.any_sobject(type_name).external_id_fields():
            if record.get(f.name) is not None:
                self._ext_index[(type_name, f.name)][str(record[f.name]).lower()].discard(record_id)

    # -- ids, clocks, counters -----------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return ids.make_id(prefix, self.next_number(f"id:{prefix}"))

    def next_number(self, name: str) -> int:
        """A persistent counter (ids, autonumbers). Never rolled back, like Salesforce's."""
        key = f"counter:{name}"
        self._counters[key] = self._counters.get(key, 0) + 1
        self.set_meta(key, self._counters[key])
        return self._counters[key]

    def next_modstamp(self) -> str:
        """Now, or 1 ms after the previous stamp: strictly increasing even within a millisecond,
        so a watermark poller never sees two writes with the same SystemModstamp."""
        stamp = format_datetime(datetime.now(UTC))
        if stamp <= self._last_modstamp:
            stamp = format_datetime(parse_datetime(self._last_modstamp) + timedelta(milliseconds=1))
        self._last_modstamp = stamp
        return stamp

    def settle_modstamp(self, stamp: str) -> None:
        self._last_modstamp = max(self._last_modstamp, stamp)

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    def wipe(self) -> None:
        """Delete every record and counter, keeping meta such as sessions (see `reset`)."""
        with self.lock:
            self.db.execute("DELETE FROM records")
            self.db.execute("DELETE FROM meta WHERE key LIKE 'counter:%' OR key LIKE 'usage:%'")
            self._load()

    def close(self) -> None:
        with self.lock:
            self.db.close()
