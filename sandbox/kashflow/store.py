"""The simulated KashFlow account's state: one SQLite file in the state dir.

It survives a restart of the sandbox, so a demo keeps its data and its login. Every request runs
in one transaction under one lock: the server is threaded, and serialising is simpler than
reasoning about SQLite's write lock and fast enough for one simulated company.

Rows keep the columns that lists filter and sort on; the rest of a record is a JSON document in
`doc`. Money columns (`*_4`) hold integer ten-thousandths of a pound so SQL sums stay exact.
"""

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS account (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    username TEXT NOT NULL, password TEXT NOT NULL, memorable_word TEXT NOT NULL,
    company_name TEXT NOT NULL, failures INTEGER NOT NULL DEFAULT 0,
    locked INTEGER NOT NULL DEFAULT 0, api_disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS temporary_tokens (
    token TEXT PRIMARY KEY, positions TEXT NOT NULL, created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (token TEXT PRIMARY KEY, last_used TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nominals (
    id INTEGER PRIMARY KEY, code INTEGER NOT NULL UNIQUE, name TEXT NOT NULL, type TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bank_accounts (
    id INTEGER PRIMARY KEY, code INTEGER NOT NULL UNIQUE, name TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS payment_methods (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vat_rates (id INTEGER PRIMARY KEY, rate TEXT NOT NULL, text TEXT);
-- KashFlow sits on SQL Server, whose default collation ignores case: so do customer codes.
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, code TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name TEXT NOT NULL, email TEXT NOT NULL DEFAULT '', archived INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL, updated TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS customers_updated ON customers (updated, id);
CREATE INDEX IF NOT EXISTS customers_name ON customers (name COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY AUTOINCREMENT, nominal_code INTEGER NOT NULL,
    code TEXT NOT NULL COLLATE NOCASE,
    name TEXT NOT NULL, in_use INTEGER NOT NULL DEFAULT 1, doc TEXT NOT NULL,
    UNIQUE (nominal_code, code)
);
CREATE TABLE IF NOT EXISTS invoices (
    id INTEGER PRIMARY KEY AUTOINCREMENT, number INTEGER NOT NULL UNIQUE,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    customer_reference TEXT NOT NULL DEFAULT '', issued TEXT NOT NULL, due TEXT NOT NULL,
    created TEXT NOT NULL, paid_date TEXT, last_payment_date TEXT,
    net_4 INTEGER NOT NULL, vat_4 INTEGER NOT NULL, gross_4 INTEGER NOT NULL,
    paid_4 INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_customer ON invoices (customer_id);
CREATE INDEX IF NOT EXISTS invoices_reference ON invoices (customer_reference);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
DATA_TABLES = ("invoices", "products", "customers", "nominals", "bank_accounts")
REFERENCE_TABLES = ("payment_methods", "vat_rates", "counters", "temporary_tokens")
# Internal ids start far from business keys so a client that mixes up invoice Id and Number,
# or bank account Id and Code, fails loudly.
ID_BASES = {"customers": 5000, "invoices": 190000, "products": 7000}


@dataclass
class Txn:
    """One request's view of the account: the connection inside its transaction, and 'now'."""

    db: sqlite3.Connection
    now: datetime
    base_url: str = ""
    options: dict = field(default_factory=dict)

    def one(self, sql: str, params=()) -> sqlite3.Row | None:
        return self.db.execute(sql, params).fetchone()

    def all(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self.db.execute(sql, params).fetchall()

    def run(self, sql: str, params=()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def next_id(self, counter: str) -> int:
        """A fresh id for sub-records (contacts, payment lines) that have no table of their own."""
        self.run(
            "INSERT INTO counters (name, value) VALUES (?, 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (counter,),
        )
        return self.one("SELECT value FROM counters WHERE name = ?", (counter,))["value"]


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(SCHEMA)

    @contextmanager
    def transaction(self, now: datetime, base_url: str = "", options: dict | None = None):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield Txn(self.db, now, base_url, options or {})
            except BaseException as exc:
                self.db.execute("COMMIT" if getattr(exc, "commit", False) else "ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def wipe(self, txn: Txn) -> None:
        """Delete the account's data, keeping its login and open sessions."""
        for table in DATA_TABLES + REFERENCE_TABLES:
            txn.run(f"DELETE FROM {table}")
        txn.run("DELETE FROM sqlite_sequence")
        txn.db.executemany(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", ID_BASES.items()
        )

    def close(self) -> None:
        with self.lock:
            self.db.close()
