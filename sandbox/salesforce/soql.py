"""A SOQL subset: parser and evaluator over the store's in-memory records.

Supported: field lists with parent paths (Account.Name, PricebookEntry.Product2.ProductCode) and
child subqueries; WHERE with = != <> < <= > >= IN / NOT IN (values or a semi-join subquery), LIKE,
AND / OR / NOT and parentheses; string, number, boolean, null, date, datetime literals and the
date literals TODAY, YESTERDAY, TOMORROW, LAST_N_DAYS:n, NEXT_N_DAYS:n; ORDER BY with ASC/DESC and
NULLS FIRST/LAST; LIMIT; OFFSET; COUNT(). Errors are the ones Salesforce answers: MALFORMED_QUERY
for syntax, INVALID_FIELD for unknown columns, INVALID_TYPE for unknown objects.
"""

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sandbox.salesforce import ids, schema
from sandbox.salesforce.errors import ApiError
from sandbox.salesforce.store import format_datetime, parse_datetime

TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<op>!=|<>|<=|>=|=|<|>)
    | (?P<punct>[(),:])
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)
KEYWORDS = {
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "NULLS",
    "FIRST",
    "LAST",
    "LIMIT",
    "OFFSET",
    "NULL",
    "TRUE",
    "FALSE",
}
RELATIVE_DAYS = {"TODAY": (0, 1), "YESTERDAY": (-1, 0), "TOMORROW": (1, 2)}


def malformed(message: str) -> ApiError:
    return ApiError(400, "MALFORMED_QUERY", message)


@dataclass
class Subquery:
    relationship: str
    query: "Query"


@dataclass
class Query:
    sobject: str
    fields: list  # dotted paths (str) and Subquery items
    where: tuple | None = None
    order: list = field(default_factory=list)  # (path, descending, nulls_first)
    limit: int | None = None
    offset: int = 0
    count: bool = False


# -- parsing ------------------------------------------------------------------------------------


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if not match or match.end() == position:
            raise malformed(f"unexpected token: '{text[position : position + 20].split()[0]}'")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class Parser:
    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.position = 0

    def peek(self, offset=0) -> tuple[str, str]:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def keyword(self, *words) -> bool:
        kind, value = self.peek()
        return kind == "name" and value.upper() in words

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.position += 1
        return token

    def expect(self, word: str) -> None:
        _kind, value = self.take()
        if value.upper() != word.upper():
            raise malformed(f"unexpected token: '{value or 'end of query'}', expecting '{word}'")

    def parse(self) -> Query:
        query = self.query()
        if self.peek()[0] != "end":
            raise malformed(f"unexpected token: '{self.peek()[1]}'")
        return query

    def query(self) -> Query:
        self.expect("SELECT")
        fields, count = self.select_list()
        self.expect("FROM")
        query = Query(sobject=self.object_name(), fields=fields, count=count)
        if self.keyword("WHERE"):
            self.take()
            query.where = self.disjunction()
        if self.keyword("ORDER"):
            self.take()
            self.expect("BY")
            query.order = self.order_list()
        if self.keyword("LIMIT"):
            self.take()
            query.limit = self.integer()
        if self.keyword("OFFSET"):
            self.take()
            query.offset = self.integer()
        return query

    def select_list(self) -> tuple[list, bool]:
        items, count = [], False
        while True:
            if self.keyword("COUNT") and self.peek(1) == ("punct", "("):
                self.position += 2
                self.expect(")")
                count = True
            elif self.peek() == ("punct", "("):
                self.take()
                sub = self.query()
                self.expect(")")
                items.append(Subquery(sub.sobject, sub))
            else:
                items.append(self.name())
            if self.peek() != ("punct", ","):
                return items, count
            self.take()

    def name(self) -> str:
        kind, value = self.take()
        if kind != "name" or value.upper() in KEYWORDS - {"FIRST", "LAST"}:
            raise malformed(f"unexpected token: '{value or 'end of query'}'")
        return value

    def object_name(self) -> str:
        """After FROM: "Order" is an object there, not the keyword of ORDER BY."""
        if self.keyword("ORDER") and self.peek(1)[1].upper() != "BY":
            return self.take()[1]
        return self.name()

    def integer(self) -> int:
        kind, value = self.take()
        if kind != "number" or "." in value:
            raise malformed(f"unexpected token: '{value}', expecting an integer")
        return int(value)

    def order_list(self) -> list:
        items = []
        while True:
            path, descending = self.name(), False
            if self.keyword("ASC", "DESC"):
                descending = self.take()[1].upper() == "DESC"
            nulls_first = not descending
            if self.keyword("NULLS"):
                self.take()
                nulls_first = self.take()[1].upper() == "FIRST"
            items.append((path, descending, nulls_first))
            if self.peek() != ("punct", ","):
                return items
            self.take()

    def disjunction(self):
        terms = [self.conjunction()]
        while self.keyword("OR"):
            self.take()
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def conjunction(self):
        terms = [self.negation()]
        while self.keyword("AND"):
            self.take()
            terms.append(self.negation())
        return terms[0] if len(terms) == 1 else ("and", terms)

    def negation(self):
        if self.keyword("NOT"):
            self.take()
            return ("not", self.negation())
        if self.peek() == ("punct", "("):
            self.take()
            inner = self.disjunction()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self):
        path = self.name()
        if self.keyword("NOT") and self.peek(1)[1].upper() == "IN":
            self.position += 2
            return ("not", ("in", path, self.in_values()))
        if self.keyword("IN"):
            self.take()
            return ("in", path, self.in_values())
        if self.keyword("LIKE"):
            self.take()
            kind, value = self.take()
            if kind != "string":
                raise malformed("LIKE needs a string literal")
            return ("like", path, _unquote(value))
        kind, op = self.take()
        if kind != "op":
            raise malformed(f"unexpected token: '{op or 'end of query'}'")
        return ("cmp", path, "!=" if op == "<>" else op, self.literal())

    def in_values(self):
        self.expect("(")
        if self.keyword("SELECT"):
            sub = self.query()
            self.expect(")")
            return sub
        values = [self.literal()]
        while self.peek() == ("punct", ","):
            self.take()
            values.append(self.literal())
        self.expect(")")
        return values

    def literal(self):
        kind, value = self.take()
        if kind == "string":
            return _unquote(value)
        if kind == "number":
            return float(value) if "." in value else int(value)
        if kind == "date":
            day = date.fromisoformat(value)
            return ("range", day, day + timedelta(days=1))
        if kind == "datetime":
            return ("instant", parse_datetime(value))
        if kind == "name":
            return self.word_literal(value.upper())
        raise malformed(f"unexpected token: '{value or 'end of query'}'")

    def word_literal(self, word: str):
        if word in ("NULL", "TRUE", "FALSE"):
            return {"NULL": None, "TRUE": True, "FALSE": False}[word]
        today = datetime.now(UTC).date()
        if word in RELATIVE_DAYS:
            start, end = RELATIVE_DAYS[word]
            return ("range", today + timedelta(days=start), today + timedelta(days=end))
        if word in ("LAST_N_DAYS", "NEXT_N_DAYS") and self.peek() == ("punct", ":"):
            self.take()
            days = self.integer()
            if word == "LAST_N_DAYS":
                return ("range", today - timedelta(days=days), today + timedelta(days=1))
            return ("range", today + timedelta(days=1), today + timedelta(days=days + 1))
        raise malformed(f"unexpected token: '{word}'")


def _unquote(literal: str) -> str:
    return re.sub(
        r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), literal[1:-1]
    )


def parse(text: str) -> Query:
    return Parser(text).parse()


# -- evaluation ---------------------------------------------------------------------------------


class Evaluator:
    """Runs a parsed query against a store; `serialize` turns rows into API records."""

    def __init__(self, store, version: str, include_deleted=False):
        self.store = store
        self.version = version
        self.include_deleted = include_deleted
        self._children_cache: dict = {}

    def run(self, query: Query) -> list[dict]:
        sobj = schema.sobject(query.sobject)
        if not sobj:
            raise ApiError(400, "INVALID_TYPE", f"sObject type '{query.sobject}' is not supported.")
        self.check(sobj, query)
        rows = [
            r
            for r in self.store.all(sobj.name)
            if (self.include_deleted or not r["IsDeleted"])
            and (query.where is None or self.test(sobj, r, query.where))
        ]
        rows = self.sort(sobj, rows, query.order)
        end = None if query.limit is None else query.offset + query.limit
        return rows[query.offset : end]

    def check(self, sobj: schema.SObject, query: Query) -> None:
        """Resolve every path once so unknown fields fail before any row is read."""
        for item in query.fields:
            if isinstance(item, Subquery):
                child = sobj.child_relationship(item.relationship)
                if not child:
                    raise ApiError(
                        400,
                        "INVALID_TYPE",
                        f"Didn't understand relationship "
                        f"'{item.relationship}' in FROM part of query call.",
                    )
                self.check(
                    schema.sobject(child[0]),
                    Query(child[0], item.query.fields, item.query.where, item.query.order),
                )
            else:
                resolve_path(sobj, item)
        for path, *_ in query.order:
            resolve_path(sobj, path)
        _walk_conditions(query.where, lambda path: resolve_path(sobj, path))

    # -- filtering

    def test(self, sobj: schema.SObject, record: dict, condition) -> bool:
        kind = condition[0]
        if kind == "and":
            return all(self.test(sobj, record, c) for c in condition[1])
        if kind == "or":
            return any(self.test(sobj, record, c) for c in condition[1])
        if kind == "not":
            return not self.test(sobj, record, condition[1])
        f, value = self.value_of(sobj, record, condition[1])
        if kind == "like":
            return value is not None and _like(condition[2], str(value))
        if kind == "in":
            return any(_compare(f, value, "=", c) for c in self.in_list(condition[2]))
        return _compare(f, value, condition[2], condition[3])

    def in_list(self, values) -> list:
        if isinstance(values, Query):  # semi-join: Id IN (SELECT AccountId FROM Opportunity)
            key = id(values)
            if key not in self._children_cache:
                sub = Evaluator(self.store, self.version).run(values)
                sobj = schema.sobject(values.sobject)
                found = {self.value_of(sobj, r, values.fields[0])[1] for r in sub}
                self._children_cache[key] = [v for v in found if v is not None]
            return self._children_cache[key]
        return values

    def value_of(self, sobj: schema.SObject, record: dict | None, path: str):
        *parents, last = path.split(".")
        if parents and parents[0].lower() == sobj.name.lower():
            parents = parents[1:]  # "Account.Name" in a query FROM Account
        for relationship in parents:
            ref = sobj.relationship(relationship)
            target = schema.sobject(ref.reference_to[0])
            parent_id = record.get(ref.name) if record else None
            record = self.store.get(target.name, parent_id) if parent_id else None
            sobj = target
        f = sobj.field(last)
        return f, (field_value(f, record) if record else None)

    def sort(self, sobj: schema.SObject, rows: list[dict], order: list) -> list[dict]:
        for path, descending, nulls_first in reversed(order):
            present = [r for r in rows if self.value_of(sobj, r, path)[1] is not None]
            absent = [r for r in rows if self.value_of(sobj, r, path)[1] is None]
            present.sort(
                key=lambda r, p=path: _sort_key(self.value_of(sobj, r, p)[1]), reverse=descending
            )
            rows = absent + present if nulls_first else present + absent
        return rows

    # -- shaping results

    def serialize(self, sobj: schema.SObject, record: dict, items: list) -> dict:
        out = {"attributes": attributes(sobj.name, record["Id"], self.version)}
        for item in items:
            if isinstance(item, Subquery):
                name, value = self.subquery(sobj, record, item)
                out[name] = value
            else:
                self.put_path(out, sobj, record, item)
        return out

    def put_path(self, out: dict, sobj: schema.SObject, record: dict | None, path: str) -> None:
        *parents, last = path.split(".")
        if parents and parents[0].lower() == sobj.name.lower():
            parents = parents[1:]
        for relationship in parents:
            ref = sobj.relationship(relationship)
            target = schema.sobject(ref.reference_to[0])
            parent = self.store.get(target.name, record.get(ref.name)) if record else None
            if ref.relationship_name not in out:
                out[ref.relationship_name] = (
                    {"attributes": attributes(target.name, parent["Id"], self.version)}
                    if parent
                    else None
                )
            if out[ref.relationship_name] is None:
                return
            out, sobj, record = out[ref.relationship_name], target, parent
        f = sobj.field(last)
        out[f.name] = field_value(f, record)

    def subquery(self, sobj: schema.SObject, record: dict, item: Subquery) -> tuple[str, dict]:
        relationship = next(r for r in sobj.children if r.lower() == item.relationship.lower())
        child_type, child_field = sobj.children[relationship]
        child_sobj = schema.sobject(child_type)
        children = self.children_of(child_type, child_field).get(record["Id"], [])
        query = item.query
        children = [
            c for c in children if query.where is None or self.test(child_sobj, c, query.where)
        ]
        children = self.sort(child_sobj, children, query.order)
        end = None if query.limit is None else query.offset + query.limit
        children = children[query.offset : end]
        if not children:
            return relationship, None
        records = [self.serialize(child_sobj, c, query.fields) for c in children]
        return relationship, {"totalSize": len(records), "done": True, "records": records}

    def children_of(self, child_type: str, child_field: str) -> dict[str, list]:
        """Children grouped by parent id, built once per query (subqueries over many parents)."""
        key = (child_type, child_field)
        if key not in self._children_cache:
            grouped: dict[str, list] = {}
            for child in self.store.all(child_type):
                if child.get(child_field) and not child["IsDeleted"]:
                    grouped.setdefault(child[child_field], []).append(child)
            self._children_cache[key] = grouped
        return self._children_cache[key]


def resolve_path(sobj: schema.SObject, path: str) -> schema.Field:
    *parents, last = path.split(".")
    if parents and parents[0].lower() == sobj.name.lower():
        parents = parents[1:]
    for relationship in parents:
        ref = sobj.relationship(relationship)
        if not ref:
            raise _no_such_column(sobj, path, relationship)
        sobj = schema.sobject(ref.reference_to[0])
    f = sobj.field(last)
    if not f:
        raise _no_such_column(sobj, path, last)
    return f


def _no_such_column(sobj: schema.SObject, path: str, name: str) -> ApiError:
    return ApiError(
        400,
        "INVALID_FIELD",
        f"\n{path}\n^\nERROR at Row:1:Column:1\nNo such column "
        f"'{name}' on entity '{sobj.name}'. If you are attempting to use a custom "
        "field, be sure to append the '__c' after the custom field name. Please "
        "reference your WSDL or the describe call for the appropriate names.",
    )


def _walk_conditions(condition, visit) -> None:
    if condition is None:
        return
    if condition[0] in ("and", "or"):
        for c in condition[1]:
            _walk_conditions(c, visit)
    elif condition[0] == "not":
        _walk_conditions(condition[1], visit)
    else:
        visit(condition[1])


def attributes(type_name: str, record_id: str, version: str) -> dict:
    return {"type": type_name, "url": f"/services/data/v{version}/sobjects/{type_name}/{record_id}"}


def field_value(f: schema.Field, record: dict):
    if f.type == "address":
        prefix = f.name.removesuffix("Address")
        parts = {
            p: record.get(f"{prefix}{p[0].upper()}{p[1:]}")
            for p in ("street", "city", "state", "postalCode", "country")
        }
        if not any(parts.values()):
            return None
        return {
            **parts,
            "stateCode": None,
            "countryCode": None,
            "latitude": None,
            "longitude": None,
            "geocodeAccuracy": None,
        }
    return record.get(f.name)


def _compare(f: schema.Field, value, op: str, literal) -> bool:
    if literal is None or value is None:
        equal = literal is None and value is None
        return equal if op == "=" else (not equal if op == "!=" else False)
    if isinstance(literal, tuple):
        return _compare_moment(f, value, op, literal)
    if f.type in ("id", "reference") and isinstance(literal, str):
        literal = ids.normalize(literal) or literal
    elif isinstance(literal, str) and isinstance(value, str):
        value, literal = value.lower(), literal.lower()  # SOQL text comparison ignores case
    elif isinstance(value, bool) != isinstance(literal, bool):
        raise malformed(
            f"value of filter criterion for field '{f.name}' must be of type "
            f"{f.type} and should not be enclosed in quotes"
        )
    try:
        return _OPS[op](value, literal)
    except TypeError:
        raise malformed(
            f"value of filter criterion for field '{f.name}' must be of type {f.type}"
        ) from None


def _compare_moment(f: schema.Field, value: str, op: str, literal: tuple) -> bool:
    """Date literals are day ranges; a datetime literal is an instant."""
    if f.type not in ("date", "datetime"):
        raise malformed(f"value of filter criterion for field '{f.name}' must be of type {f.type}")
    if literal[0] == "instant":
        start = end = literal[1]
    else:
        start = datetime.combine(literal[1], datetime.min.time(), UTC)
        end = datetime.combine(literal[2], datetime.min.time(), UTC)
    moment = parse_datetime(value if f.type == "datetime" else value + "T00:00:00Z")
    if literal[0] == "instant":
        return _OPS[op](format_datetime(moment), format_datetime(start))
    inside = start <= moment < end
    return {
        "=": inside,
        "!=": not inside,
        "<": moment < start,
        "<=": moment < end,
        ">": moment >= end,
        ">=": moment >= start,
    }[op]


_OPS = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL) is not None


def _sort_key(value):
    if isinstance(value, str):
        return (1, value.lower())
    return (0, value)
