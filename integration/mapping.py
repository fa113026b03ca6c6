"""The mapping engine: turns one source record into one target payload, row by row.

Pure functions over plain dicts: no database, no HTTP, no Django models. The flow hands in
`MappingSet.as_rows()` and a `MappingContext` whose `lookup` is backed by CrossRefs it prefetched,
so the same input always gives the same payload and the mapping editor can preview safely.
Nothing here raises on bad data: problems come back as `RowError`s naming the row, which the flow
turns into an error-queue entry.

A row is `{"source_path", "target_path", "transform", "params", "default", "required"}`.

Paths
- Source paths are dotted, with list indexes: `Name`, `Addresses.0.Line1`,
  `PricebookEntry.Product2.Name`. `Contacts[?IsPrimary].Email` picks the first contact whose
  IsPrimary is true, or the first contact when none is marked.
- Target paths are dotted and build nested structure: `Contacts.0.Email` gives
  `{"Contacts": [{"Email": ...}]}`, `Currency.Code` gives `{"Currency": {"Code": ...}}`.

Settings (`params`) every row understands, whatever its transform
- `when`: a condition on the source, or a list of them that must all hold; when it does not hold
  the row is skipped and writes nothing. `{"path": "CountryCode", "equals": "GB"}`; the other
  tests are `not_equals`, `in`, `not_in` (values compared as trimmed text), `empty`, `not_empty`.
- `fallbacks`: more source paths, tried in order while the value so far is empty.
- `default_from`: a key of `context.defaults` (nominal_code, payment_method, bank_account,
  invoice_prefix, vat_rate) used when the row yields nothing; the row's own `default` comes after.
- `omit_empty`: leave the field out when the row yields nothing. Otherwise an empty result writes
  null, so a value cleared on the source is cleared on the target too.
- `missing`: what to tell a person when a required row yields nothing
  ("the customer has no email address").
- `master`: "kashflow" or "salesforce", the side that owns the field (see `rows_owned_by`).
- `as_country_code`: read the value as a country, by ISO code or by name ("United Kingdom",
  "UK", "Ireland"), and write its two-letter code; a name not known is a row error.

Empty means None, blank text, [] or {}; 0 and False are values. When `context.target_fields`
knows the target field, text is cut to its length (with a warning) and a text default such as
"4000" becomes the field's type (int, Decimal, bool).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from zoneinfo import ZoneInfo

# KashFlow writes times without an offset; they are the company's wall-clock time in the UK.
KASHFLOW_ZONE = ZoneInfo("Europe/London")
# KashFlow's "no date" sentinel (FirstInvoiceDate of a customer never invoiced, and the like).
KASHFLOW_NO_DATE = date(1900, 1, 1)
SIDES = ("salesforce", "kashflow")
SIDE_NAMES = {"salesforce": "Salesforce", "kashflow": "KashFlow"}
# The same values as integration.models.CrossRef.ObjectType (a test keeps them in step).
LOOKUP_OBJECT_TYPES = ("customer", "contact", "invoice", "payment", "product")
DEFAULT_KEYS = ("nominal_code", "payment_method", "bank_account", "invoice_prefix", "vat_rate")
ROUNDING = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN, "down": ROUND_DOWN}
EU_COUNTRIES = frozenset([
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
    "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
])  # fmt: skip
# English names of the countries a UK company most often trades with, as KashFlow and
# Salesforce spell them, and other names people type. Any other two-letter value is taken as
# an ISO code already.
COUNTRY_NAMES = {
    "GB": "United Kingdom", "IE": "Ireland", "FR": "France", "DE": "Germany", "NL": "Netherlands",
    "BE": "Belgium", "LU": "Luxembourg", "ES": "Spain", "PT": "Portugal", "IT": "Italy",
    "AT": "Austria", "DK": "Denmark", "SE": "Sweden", "FI": "Finland", "PL": "Poland",
    "CZ": "Czechia", "SK": "Slovakia", "HU": "Hungary", "SI": "Slovenia", "HR": "Croatia",
    "RO": "Romania", "BG": "Bulgaria", "GR": "Greece", "CY": "Cyprus", "MT": "Malta",
    "EE": "Estonia", "LV": "Latvia", "LT": "Lithuania", "NO": "Norway", "IS": "Iceland",
    "CH": "Switzerland", "JE": "Jersey", "GG": "Guernsey", "IM": "Isle of Man",
    "US": "United States", "CA": "Canada", "AU": "Australia", "NZ": "New Zealand",
    "ZA": "South Africa", "IN": "India", "CN": "China", "JP": "Japan", "SG": "Singapore",
    "HK": "Hong Kong", "AE": "United Arab Emirates",
}  # fmt: skip
COUNTRY_ALIASES = {
    "UK": "GB", "GREAT BRITAIN": "GB", "BRITAIN": "GB", "ENGLAND": "GB", "SCOTLAND": "GB",
    "WALES": "GB", "NORTHERN IRELAND": "GB", "REPUBLIC OF IRELAND": "IE", "EIRE": "IE",
    "THE NETHERLANDS": "NL", "HOLLAND": "NL", "CZECH REPUBLIC": "CZ", "USA": "US",
    "U.S.A.": "US", "UNITED STATES OF AMERICA": "US", "UAE": "AE", "EL": "GR",
}  # fmt: skip
_COUNTRY_CODES = {name.upper(): code for code, name in COUNTRY_NAMES.items()} | COUNTRY_ALIASES
TEXT_TYPES = frozenset([
    "string", "textarea", "email", "phone", "url", "picklist", "multipicklist", "combobox",
    "id", "reference", "encryptedstring",
])  # fmt: skip
NUMBER_TYPES = frozenset(["decimal", "currency", "double", "percent"])


# --------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class FieldInfo:
    """What the engine needs to know about one target field."""

    type: str = "string"
    length: int | None = None
    required: bool = False  # on create
    createable: bool = True
    updateable: bool = True


@dataclass(frozen=True)
class MappingContext:
    """Everything a mapping needs beyond the record itself.

    `lookup(object_type, side, key)` gives the other side's id of the record whose id on `side`
    is `key`, or None; the flow backs it with a dict of prefetched CrossRefs (no query per record).
    `vat_rules` is `{"countries": {"NO": "25"}, "products": {"BOO-0001": "0"}}` (the VAT rules
    page's version in use; product codes are KashFlow's, for products whose KashFlow record has
    no VATRate of its own: see `vat_decision`).
    """

    lookup: Callable[[str, str, str], str | None] = lambda object_type, side, key: None
    defaults: dict = field(default_factory=dict)
    vat_rules: dict = field(default_factory=dict)
    target_fields: dict[str, FieldInfo] | None = None


@dataclass(frozen=True)
class RowError:
    row: int | None  # 1-based; None for a problem no single row owns
    field: str
    problem: str

    @property
    def message(self) -> str:
        where = f"Row {self.row} ({self.field})" if self.row else self.field
        return f"{where}: {self.problem}"

    def __str__(self) -> str:
        return self.message


@dataclass
class MappingResult:
    payload: dict
    warnings: list[str]
    errors: list[RowError]
    # Target field -> why it has its value, where a transform can say (the VAT rule applied).
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: object
    after: object


@dataclass
class Preview:
    payload: dict
    warnings: list[str]
    errors: list[RowError]
    diff: list[FieldChange]


class _RowProblem(Exception):
    """A row cannot give a value; the text is shown to a person after "Row n (Field): "."""


# --------------------------------------------------------------------------------------------
# Applying a mapping


def apply_mapping(rows: list[dict], source: dict, context: MappingContext) -> MappingResult:
    """Map `source` through `rows` (in order); never raises for bad rows or bad data."""
    result = MappingResult(payload={}, warnings=[], errors=[])
    for number, row in enumerate(rows, start=1):
        step = _Step(number, row, source, context, result.warnings, notes=result.notes)
        try:
            _apply_row(step, result.payload)
        except _RowProblem as problem:
            result.errors.append(RowError(number, row.get("target_path", ""), str(problem)))
    return result


def rows_owned_by(rows: list[dict], side: str) -> list[dict]:
    """The rows an update from `side` may write: those whose field `side` owns, or nobody does.

    A create sends every row; an update sends only these, so a field mastered on the other side
    is never overwritten by a routine sync.
    """
    return [row for row in rows if (row.get("params") or {}).get("master") in (None, side)]


def preview(
    rows: list[dict], source: dict, context: MappingContext, current_target: dict | None = None
) -> Preview:
    """What the mapping would write, and which fields that changes on `current_target`."""
    result = apply_mapping(rows, source, context)
    current = current_target or {}
    diff = [
        FieldChange(path, read_path(current, path), after)
        for path, after in _flatten(result.payload).items()
        if not _same_value(read_path(current, path), after)
    ]
    return Preview(result.payload, result.warnings, result.errors, diff)


def content_hash(payload: object) -> str:
    """A stable hash of a JSON-able payload: same content, same hash, whatever the key order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


payload_hash = content_hash


@dataclass
class _Step:
    number: int
    row: dict
    source: dict
    context: MappingContext
    warnings: list[str]
    # Why a row came out empty, when a transform knows better than "no value at <path>".
    missing_reason: str = ""
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> dict:
        return self.row.get("params") or {}

    @property
    def target(self) -> str:
        return self.row.get("target_path", "")

    @property
    def target_info(self) -> FieldInfo | None:
        return (self.context.target_fields or {}).get(field_key(self.target))

    def warn(self, text: str) -> None:
        self.warnings.append(f"Row {self.number} ({self.target}): {text}")


def _apply_row(step: _Step, payload: dict) -> None:
    problems = row_problems(step.row)
    if problems:
        raise _RowProblem(" ".join(problems))
    if "when" in step.params and not condition_holds(step.params["when"], step.source):
        return
    value = TRANSFORMS[step.row.get("transform") or "copy"](_read_source(step), step)
    if step.params.get("as_country_code") and not is_empty(value):
        value = _country_code_or_problem(value)
    if is_empty(value):
        value = _default_for(step)
    value = _fit_to_target(value, step)
    if is_empty(value):
        if step.row.get("required"):
            raise _RowProblem(f"{_missing_reason(step)}, and this field is required.")
        if step.missing_reason:
            step.warn(f"{step.missing_reason}; left empty.")
        if step.params.get("omit_empty"):
            return
        value = None
    _write_path(payload, step.target, value)


def _country_code_or_problem(value: object) -> str:
    code = country_code_of(value)
    if code is None:
        raise _RowProblem(
            f"{value!r} is not a country kashforce knows; use its two-letter ISO code (GB, IE, FR)."
        )
    return code


def _read_source(step: _Step) -> object:
    value = read_path(step.source, step.row.get("source_path") or "")
    for path in step.params.get("fallbacks", []):
        if not is_empty(value):
            break
        value = read_path(step.source, path)
    return value


def _default_for(step: _Step) -> object:
    key = step.params.get("default_from")
    value = step.context.defaults.get(key) if key else None
    if is_empty(value):
        value = step.row.get("default") or None
    if step.missing_reason and not is_empty(value):
        step.warn(f"{step.missing_reason}; used the default {value}.")
    return value


def _missing_reason(step: _Step) -> str:
    if step.params.get("missing"):
        return step.params["missing"]
    if step.missing_reason:
        return step.missing_reason
    if step.row.get("source_path"):
        return f"the record has no value at {step.row['source_path']}"
    return "this row gave no value"


def _fit_to_target(value: object, step: _Step) -> object:
    """Give the value the target field's type and cut text to its length (with a warning)."""
    info = step.target_info
    if info is None or is_empty(value):
        return value
    value = _coerce(value, info.type)
    if isinstance(value, str) and info.length and len(value) > info.length:
        value = _cut(value, info.length, step)
    return value


def _coerce(value: object, field_type: str) -> object:
    if field_type in TEXT_TYPES and not isinstance(value, str):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if not isinstance(value, str):
        return value
    if field_type in NUMBER_TYPES:
        return to_decimal(value)
    if field_type == "int":
        number = to_decimal(value)
        if number != number.to_integral_value():
            raise _RowProblem(f"{value!r} is not a whole number.")
        return int(number)
    if field_type == "boolean":
        return _to_bool(value)
    return value


def _to_bool(text: str) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.strip().lower() not in words:
        raise _RowProblem(f"{text!r} is not yes or no.")
    return words[text.strip().lower()]


# --------------------------------------------------------------------------------------------
# Paths and conditions


_SELECTOR = re.compile(r"^(?P<name>[^\[\]]*)\[\?(?P<flag>\w+)\]$")


def read_path(record: object, path: str) -> object:
    """The value at a dotted source path, or None when any step of it is missing."""
    if not path:
        return None
    value = record
    for segment in path.split("."):
        value = _step_into(value, segment)
        if value is None:
            return None
    return value


def _step_into(value: object, segment: str) -> object:
    selector = _SELECTOR.match(segment)
    if selector:
        items = _step_into(value, selector["name"]) if selector["name"] else value
        return _flagged_item(items, selector["flag"])
    if isinstance(value, dict):
        return value.get(segment)
    if isinstance(value, list) and segment.isdigit():
        index = int(segment)
        return value[index] if index < len(value) else None
    return None


def _flagged_item(items: object, flag: str) -> object:
    if not isinstance(items, list) or not items:
        return None
    return next((item for item in items if isinstance(item, dict) and item.get(flag)), items[0])


def field_key(target_path: str) -> str:
    """The key of a target path in a field list: `Contacts.0.Email` -> `Contacts[].Email`."""
    key: list[str] = []
    for segment in target_path.split("."):
        if segment.isdigit() and key:
            key[-1] += "[]"
        else:
            key.append(segment)
    return ".".join(key)


def _write_path(payload: dict, path: str, value: object) -> None:
    segments = path.split(".")
    container: dict | list = payload
    for segment, following in itertools.pairwise(segments):
        container = _child(container, segment, list if following.isdigit() else dict)
    _put(container, segments[-1], value)


def _child(container: dict | list, segment: str, kind: type) -> dict | list:
    current = _get(container, segment)
    if current is None:
        current = kind()
        _put(container, segment, current)
    if not isinstance(current, kind):
        raise _RowProblem(f"{segment} is already filled by another row in another shape.")
    return current


def _get(container: dict | list, segment: str) -> object:
    if isinstance(container, dict):
        return container.get(segment)
    index = _index(segment)
    return container[index] if index < len(container) else None


def _put(container: dict | list, segment: str, value: object) -> None:
    if isinstance(container, dict):
        container[segment] = value
        return
    index = _index(segment)
    # Earlier positions get empty objects, not nulls: KashFlow rejects a null contact.
    container.extend({} for _ in range(index + 1 - len(container)))
    container[index] = value


def _index(segment: str) -> int:
    if not segment.isdigit():
        raise _RowProblem(f"{segment!r} is not a list position.")
    return int(segment)


def is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | dict | tuple):
        return not value
    return False


CONDITION_TESTS = ("equals", "not_equals", "in", "not_in", "empty", "not_empty")


def condition_holds(when: dict | list[dict], source: dict) -> bool:
    conditions = when if isinstance(when, list) else [when]
    return all(_holds(condition, source) for condition in conditions)


def _holds(condition: dict, source: dict) -> bool:
    value = read_path(source, condition["path"])
    if "empty" in condition:
        return is_empty(value) == bool(condition["empty"])
    if "not_empty" in condition:
        return is_empty(value) != bool(condition["not_empty"])
    text = _as_text(value)
    if "equals" in condition:
        return text == _as_text(condition["equals"])
    if "not_equals" in condition:
        return text != _as_text(condition["not_equals"])
    allowed = {_as_text(item) for item in condition.get("in", condition.get("not_in", []))}
    return (text in allowed) == ("in" in condition)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


# --------------------------------------------------------------------------------------------
# Money


def to_decimal(value: object) -> Decimal:
    """A finite Decimal from a str, int, Decimal or float.

    A float (from JSON) goes through str(), whose shortest round-tripping form is the number the
    sender wrote: Decimal(0.1) would carry the binary error 0.1000000000000000055511151231257827.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise _RowProblem(f"{value!r} is not a number.")
    text = str(value).strip()
    if not _NUMBER_TEXT.match(text):
        raise _RowProblem(f"{text!r} is not a number.")
    return Decimal(text)


# Plain numbers only: Decimal() also takes "NaN", "Infinity" and "1_000", none of which is money.
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def round_decimal(value: object, places: int = 2, rounding: str = "half_up") -> Decimal:
    """`value` as a Decimal with exactly `places` decimals.

    The rule is round half up (0.125 -> 0.13, -0.125 -> -0.13: halves go away from zero), the
    rounding HMRC's VAT guide allows for amounts (Notice 700 §17.5: "to the nearest 1p") and the
    one people expect from a calculator; `half_even` and `down` (toward zero) are there for the
    rare field that needs them.
    """
    number = to_decimal(value)
    try:
        return number.quantize(Decimal(1).scaleb(-places), rounding=ROUNDING[rounding])
    except InvalidOperation:
        raise _RowProblem(f"{number} is too large.") from None


def line_vat_amount(quantity: object, rate: object, vat_level: object) -> Decimal:
    """VAT of one invoice line: Quantity x Rate x VATLevel / 100, to the penny, half up.

    VAT is worked out line by line and each line rounded to the nearest penny (HMRC Notice 700
    §17.5 allows this; it is how KashFlow shows VAT per line); the invoice's VAT is the sum of its
    lines. We do not use the optional concession of rounding the invoice total down.
    """
    net = to_decimal(quantity) * to_decimal(rate)
    return round_decimal(net * to_decimal(vat_level) / 100)


@dataclass(frozen=True)
class VatDecision:
    """A line's VAT percentage and, in words for a finance user, the rule that gave it."""

    rate: Decimal
    rule: str


def vat_decision(
    country: object,
    product_code: object,
    vat_rules: dict,
    default: object,
    *,
    vat_number: object = None,
    product_rate: object = None,
    eu_rate: object = "0",
) -> VatDecision:
    """The VAT percentage for one line of a sale, and the rule that decided it.

    In this order:
    1. A customer in another EU country with a VAT number (a business): `eu_rate`, 0 by default,
       as the customer accounts for the VAT under the reverse charge.
    2. A customer outside the UK with a rule for their country in `vat_rules["countries"]`.
    3. A customer outside the UK and the EU: 0 (an export, zero-rated or outside the scope).
    4. Everyone else (the UK, an EU customer without a VAT number, who is charged UK VAT as a
       consumer would be, an unknown country): the KashFlow product's own VATRate
       (`product_rate`: books 0, energy 5); else the product's rule in `vat_rules["products"]`
       (KashFlow product codes); else the UK rate (`countries["GB"]`, 20) for a UK or EU
       customer, and `default` for a customer whose country is not known.
    The country may be an ISO code or a name ("United Kingdom", "UK", "Ireland"); a name
    kashforce does not know counts as unknown.
    """
    country_code = country_code_of(country) or ""
    countries, products = vat_rules.get("countries", {}), vat_rules.get("products", {})
    number = _as_text(vat_number)
    in_eu = country_code in EU_COUNTRIES
    if in_eu and number:
        return VatDecision(
            to_decimal(eu_rate),
            f"EU business customer ({country_code}, VAT number {number}): reverse charge",
        )
    if country_code and country_code != "GB" and country_code in countries:
        return VatDecision(
            to_decimal(countries[country_code]), f"the VAT rule for customers in {country_code}"
        )
    if country_code and country_code != "GB" and not in_eu:
        return VatDecision(Decimal(0), f"customer outside the UK and EU ({country_code}): export")
    why = f"EU customer ({country_code}) without a VAT number: UK VAT; " if in_eu else ""
    if not is_empty(product_rate):
        return VatDecision(to_decimal(product_rate), f"{why}the KashFlow product's VAT rate")
    product = _as_text(product_code)
    if product and product in products:
        return VatDecision(to_decimal(products[product]), f"{why}the VAT rule for {product}")
    if country_code:
        return VatDecision(to_decimal(countries.get("GB", "20")), f"{why}the UK standard rate")
    return VatDecision(
        to_decimal(default), "the default VAT rate (the customer's country is unknown)"
    )


def vat_rate_for(
    country: object, product_code: object, vat_rules: dict, default: object, eu_rate: object = "0"
) -> Decimal:
    """`vat_decision`'s rate, for a customer with no VAT number and a product with no rate."""
    return vat_decision(country, product_code, vat_rules, default, eu_rate=eu_rate).rate


# --------------------------------------------------------------------------------------------
# Dates


_WHEN_TEXT = re.compile(
    r"^\s*(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[ T](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?))?"
    r"\s*(?P<offset>Z|[+-]\d{2}:?\d{2})?\s*$"
)


def calendar_date(value: object) -> date | None:
    """The calendar day a value names, read from its date part and never through a time zone.

    "2024-03-31", "2024-03-31 12:00:00", "2024-03-31 23:30:00 +05:30" and
    "2024-03-31T23:30:00.000+0000" are all 31 March 2024. KashFlow's 1900-01-01 means no date.
    """
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    else:
        day = _parse_date(_when_parts(value)["date"], value)
    return None if day == KASHFLOW_NO_DATE else day


def utc_moment(value: object) -> datetime | None:
    """A moment as an aware UTC datetime.

    A time with an offset (or Z) is read with it; a time without one is KashFlow's and is taken as
    UK time (Europe/London, so GMT or BST by the date). In the autumn hour that happens twice the
    first (BST) one is taken, and a time in the spring gap is read with the winter offset.
    A bare date is that day at 12:00:00 UK time, as KashFlow writes days.
    """
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=KASHFLOW_ZONE)
        return moment.astimezone(UTC)
    parts = _when_parts(value)
    day = _parse_date(parts["date"], value)
    if day == KASHFLOW_NO_DATE:
        return None
    clock = time.fromisoformat(parts["time"]) if parts["time"] else time(12)
    zone = _zone(parts["offset"]) if parts["offset"] else KASHFLOW_ZONE
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


def _when_parts(value: object) -> dict:
    match = _WHEN_TEXT.match(str(value))
    if not match:
        raise _RowProblem(f"{value!r} is not a date.")
    return match.groupdict()


def _parse_date(text: str, original: object) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _RowProblem(f"{original!r} is not a date.") from None


def _zone(offset: str) -> timezone:
    if offset == "Z":
        return UTC
    digits = offset[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return timezone(-delta if offset[0] == "-" else delta)


def format_date(day: date, to: str) -> str:
    """Salesforce: 2024-03-31. KashFlow: 2024-03-31 12:00:00, midday so no zone moves the day."""
    return f"{day.isoformat()} 12:00:00" if to == "kashflow" else day.isoformat()


def format_moment(moment: datetime, to: str) -> str:
    """Salesforce: 2024-03-31T10:00:00.000+0000. KashFlow: UK wall-clock time. utc: ISO 8601."""
    if to == "kashflow":
        return moment.astimezone(KASHFLOW_ZONE).strftime("%Y-%m-%d %H:%M:%S")
    utc = moment.astimezone(UTC)
    if to == "utc":
        return utc.isoformat()
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+0000"


# --------------------------------------------------------------------------------------------
# Names and streets


def split_person_name(name: object) -> tuple[str | None, str | None]:
    """(first, last): the last word is the last name, the rest the first name.

    "Mary Anne Smith" -> ("Mary Anne", "Smith"). One word is a last name only, because Salesforce
    requires LastName and can live without FirstName. Titles and suffixes are not recognised.
    """
    words = _as_text(name).split()
    if not words:
        return None, None
    return " ".join(words[:-1]) or None, words[-1]


def street_lines(street: object, lines: int = 4) -> list[str]:
    """A multi-line street as at most `lines` lines, blank lines dropped.

    Extra lines are folded into the last one with ", " so no part of an address is lost.
    """
    parts = [part.strip() for part in re.split(r"\r\n|\r|\n", _as_text(street)) if part.strip()]
    if len(parts) > lines:
        parts = [*parts[: lines - 1], ", ".join(parts[lines - 1 :])]
    return parts


def join_street(lines: list[object]) -> str | None:
    """Address lines as one Salesforce street, one line per row, blank lines dropped."""
    return "\n".join(text for line in lines if (text := _as_text(line))) or None


# --------------------------------------------------------------------------------------------
# Transforms: (value read from source_path, step) -> value


def _copy(value: object, step: _Step) -> object:
    return value


def _constant(value: object, step: _Step) -> object:
    return step.params.get("value")


def _date(value: object, step: _Step) -> str | None:
    if is_empty(value):
        return None
    day = calendar_date(value)
    return format_date(day, step.params["to"]) if day else None


def _datetime(value: object, step: _Step) -> str | None:
    if is_empty(value):
        return None
    moment = utc_moment(value)
    return format_moment(moment, step.params["to"]) if moment else None


def _concat(value: object, step: _Step) -> str | None:
    """Paths give the record's values; {"value": ...} is fixed text and {"default": key} a
    context default. Blank parts are dropped; with no value from the record there is no result,
    so "KF-PAY-" alone never becomes an id."""
    pieces, read_something = [], False
    for item in step.params["sources"]:
        if isinstance(item, str):
            text = _as_text(read_path(step.source, item))
            read_something = read_something or bool(text)
        elif "value" in item:
            text = _as_text(item["value"])
        else:
            text = _as_text(step.context.defaults.get(item["default"]))
        if text:
            pieces.append(text)
    return step.params.get("separator", " ").join(pieces) if read_something else None


def _split_name(value: object, step: _Step) -> str | None:
    first, last = split_person_name(value)
    return first if step.params["part"] == "first" else last


def _split_street(value: object, step: _Step) -> str | None:
    line, lines = step.params["line"], step.params.get("lines", 4)
    parts = street_lines(value, lines)
    if line == lines and len(street_lines(value, 99)) > lines:
        step.warn(f"the street has more than {lines} lines; the last ones were put on this line.")
    return parts[line - 1] if line <= len(parts) else None


def _join_street(value: object, step: _Step) -> str | None:
    return join_street([read_path(step.source, path) for path in step.params["sources"]])


def country_code_of(value: object) -> str | None:
    """The ISO 3166 code of a country given by code or by name, or None if it is not known."""
    text = " ".join(_as_text(value).upper().split())
    if text in _COUNTRY_CODES:
        return _COUNTRY_CODES[text]
    return text if re.fullmatch(r"[A-Z]{2}", text) else None


def _lookup(value: object, step: _Step) -> str | None:
    if is_empty(value):
        return None
    object_type, side = step.params["object_type"], step.params["side"]
    key = _as_text(value)
    found = step.context.lookup(object_type, side, key)
    if found is None:
        other = SIDES[1 - SIDES.index(side)]
        step.missing_reason = (
            f"no {SIDE_NAMES[other]} {object_type} is linked to {SIDE_NAMES[side]} record {key} yet"
        )
        return None
    part = step.params.get("part")
    return _product_key_part(found, part, step) if part else found


def _product_key_part(key: str, part: str, step: _Step) -> str | None:
    """KashFlow product keys are "{NominalCode}-{Code}"; nominal codes are numbers, so the first
    dash ends the nominal code even when the product code has dashes of its own."""
    nominal, dash, code = key.partition("-")
    if not dash:
        step.missing_reason = f"the KashFlow product key {key!r} is not NominalCode-Code"
        return None
    return nominal if part == "nominal_code" else code


def _decimal(value: object, step: _Step) -> Decimal | None:
    if is_empty(value):
        return None
    number = to_decimal(value)
    rounded = round_decimal(
        number, step.params.get("places", 2), step.params.get("rounding", "half_up")
    )
    if rounded != number:
        step.warn(f"{number} was rounded to {rounded}.")
    return rounded


# Where the invoices flow puts the KashFlow customer and product beside each line (a mapping
# saved before these existed reads them too).
VAT_DEFAULT_PATHS = {
    "vat_number_path": "Customer.VATNumber",
    "customer_country_path": "Customer.CountryCode",
    "product_rate_path": "KashFlowProduct.VATRate",
}


def _vat_rate(value: object, step: _Step) -> Decimal:
    params = {**VAT_DEFAULT_PATHS, **step.params}
    # The KashFlow customer's country first (it is who is invoiced), else the row's path.
    country = read_path(step.source, params["customer_country_path"])
    if is_empty(country):
        country = read_path(step.source, params.get("country_path", ""))
    if not is_empty(country) and country_code_of(country) is None:
        step.warn(f"{country!r} is not a country kashforce knows, so it counts as unknown.")
    decision = vat_decision(
        country,
        read_path(step.source, params.get("product_path", "")),
        step.context.vat_rules,
        step.context.defaults.get("vat_rate", "20"),
        vat_number=read_path(step.source, params["vat_number_path"]),
        product_rate=read_path(step.source, params["product_rate_path"]),
        eu_rate=params.get("eu_rate", "0"),
    )
    step.notes[step.target] = decision.rule
    return decision.rate


def _truncate(value: object, step: _Step) -> str | None:
    if is_empty(value):
        return None
    info = step.target_info
    length = step.params.get("length") or (info.length if info else None)
    if not length:
        raise _RowProblem("there is no length to cut to: set one, or map to a field with one.")
    return _cut(_as_text(value), length, step)


def _cut(text: str, length: int, step: _Step) -> str:
    if len(text) <= length:
        return text
    step.warnings.append(f"{step.target} was cut to {length} characters.")
    return text[:length].rstrip()


def _lower(value: object, step: _Step) -> str | None:
    return None if is_empty(value) else _as_text(value).lower()


def _upper(value: object, step: _Step) -> str | None:
    return None if is_empty(value) else _as_text(value).upper()


TRANSFORMS: dict[str, Callable[[object, _Step], object]] = {
    "copy": _copy,
    "constant": _constant,
    "date": _date,
    "datetime": _datetime,
    "concat": _concat,
    "split_name": _split_name,
    "split_street": _split_street,
    "join_street": _join_street,
    "lookup": _lookup,
    "decimal": _decimal,
    "vat_rate": _vat_rate,
    "truncate": _truncate,
    "lower": _lower,
    "upper": _upper,
}
# The transforms that make a value without reading source_path.
SOURCELESS_TRANSFORMS = frozenset(["constant", "concat", "join_street", "vat_rate"])


# --------------------------------------------------------------------------------------------
# Checking rows


def _is_path_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(p, str) for p in value)


def _is_concat_sources(value: object) -> bool:
    def good(item: object) -> bool:
        return isinstance(item, str) or (
            isinstance(item, dict) and len(item) == 1 and ("value" in item or "default" in item)
        )

    return isinstance(value, list) and bool(value) and all(good(item) for item in value)


def _is_int_between(low: int, high: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _is_number(value: object) -> bool:
    try:
        to_decimal(value)
    except _RowProblem:
        return False
    return True


def _is_one_of(*choices: str) -> Callable[[object], bool]:
    return lambda v: v in choices


# transform -> {param: (required, check, what a good value looks like)}
PARAM_RULES: dict[str, dict[str, tuple[bool, Callable[[object], bool], str]]] = {
    "copy": {},
    "constant": {"value": (True, lambda v: True, "the value to write")},
    "date": {"to": (True, _is_one_of(*SIDES), '"kashflow" or "salesforce"')},
    "datetime": {"to": (True, _is_one_of(*SIDES, "utc"), '"kashflow", "salesforce" or "utc"')},
    "concat": {
        "sources": (
            True,
            _is_concat_sources,
            'a list of paths, {"value": text} or {"default": key}',
        ),
        "separator": (False, lambda v: isinstance(v, str), "text"),
    },
    "split_name": {"part": (True, _is_one_of("first", "last"), '"first" or "last"')},
    "split_street": {
        "line": (True, _is_int_between(1, 4), "a line number from 1 to 4"),
        "lines": (False, _is_int_between(1, 4), "a number of lines from 1 to 4"),
    },
    "join_street": {"sources": (True, _is_path_list, "a list of paths")},
    "lookup": {
        "object_type": (True, _is_one_of(*LOOKUP_OBJECT_TYPES), ", ".join(LOOKUP_OBJECT_TYPES)),
        "side": (True, _is_one_of(*SIDES), '"kashflow" or "salesforce" (the side the key is from)'),
        "part": (False, _is_one_of("nominal_code", "code"), '"nominal_code" or "code"'),
    },
    "decimal": {
        "places": (False, _is_int_between(0, 10), "a number of decimals from 0 to 10"),
        "rounding": (False, _is_one_of(*ROUNDING), ", ".join(ROUNDING)),
    },
    "vat_rate": {
        "country_path": (False, lambda v: isinstance(v, str), "a path"),
        "product_path": (False, lambda v: isinstance(v, str), "a path"),
        "eu_rate": (False, _is_number, "a percentage"),
        **{
            name: (False, lambda v: isinstance(v, str), "a path")
            for name in ("vat_number_path", "customer_country_path", "product_rate_path")
        },
    },
    "truncate": {"length": (False, _is_int_between(1, 1_000_000), "a positive number")},
    "lower": {},
    "upper": {},
}
COMMON_RULES: dict[str, tuple[bool, Callable[[object], bool], str]] = {
    "fallbacks": (False, _is_path_list, "a list of paths"),
    "default_from": (False, _is_one_of(*DEFAULT_KEYS), ", ".join(DEFAULT_KEYS)),
    "omit_empty": (False, lambda v: isinstance(v, bool), "true or false"),
    "missing": (False, lambda v: isinstance(v, str), "text"),
    "master": (False, _is_one_of(*SIDES), '"kashflow" or "salesforce"'),
    "as_country_code": (False, lambda v: isinstance(v, bool), "true or false"),
}


def row_problems(row: dict) -> list[str]:
    """What is wrong with one row on its own, in plain words; [] when nothing is."""
    transform = row.get("transform") or "copy"
    if transform not in TRANSFORMS:
        return [
            f"there is no transform called {transform!r}.{_did_you_mean(transform, TRANSFORMS)}"
        ]
    params = row.get("params") or {}
    if not isinstance(params, dict):
        return ["the settings must be a JSON object."]
    problems = _param_problems(transform, params)
    if transform not in SOURCELESS_TRANSFORMS and not row.get("source_path"):
        problems.append("it does not say which source field to read.")
    if "when" in params:
        problems.extend(_condition_problems(params["when"]))
    if not problems:
        problems.extend(_combination_problems(transform, params))
    return problems


def _combination_problems(transform: str, params: dict) -> list[str]:
    if transform == "split_street" and params["line"] > params.get("lines", 4):
        return ["the line number is past the number of lines."]
    if transform == "lookup" and "part" in params and params["object_type"] != "product":
        return ['"part" only applies to product look-ups.']
    return []


def _param_problems(transform: str, params: dict) -> list[str]:
    rules = {**COMMON_RULES, **PARAM_RULES[transform]}
    problems = []
    for name in params:
        if name not in rules and name != "when":
            hint = _did_you_mean(name, [*rules, "when"])
            problems.append(f"{transform} has no setting called {name!r}.{hint}")
    for name, (required, check, expected) in rules.items():
        if name not in params:
            if required:
                problems.append(f"{transform} needs the setting {name!r} ({expected}).")
        elif not check(params[name]):
            problems.append(f"the setting {name!r} should be {expected}.")
    return problems


def _condition_problems(when: object) -> list[str]:
    conditions = when if isinstance(when, list) else [when]
    for condition in conditions:
        if not isinstance(condition, dict) or not isinstance(condition.get("path"), str):
            return ['each condition needs a "path".']
        tests = [name for name in condition if name != "path"]
        if len(tests) != 1 or tests[0] not in CONDITION_TESTS:
            return [f"each condition needs exactly one test: {', '.join(CONDITION_TESTS)}."]
        if tests[0] in ("in", "not_in") and not isinstance(condition[tests[0]], list):
            return [f'"{tests[0]}" needs a list of values.']
    return []


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def validate_rows(
    rows: list[dict],
    target_fields: dict[str, FieldInfo],
    *,
    update_only: bool = False,
    filled_by_flow: tuple[str, ...] | list[str] = (),
    fixed_by_engine: tuple[str, ...] | list[str] = (),
) -> list[RowError]:
    """Every problem of a mapping against the target's fields, each naming the row and the fix.

    `update_only` is for mappings that only ever update (write-backs): fields must be updateable
    and required-on-create fields need no row. `filled_by_flow` names target fields the flow sets
    itself (a new customer's Code, a Contact's AccountId). `fixed_by_engine` names fields the
    engine depends on and sets itself, which no row may write (an invoice's CustomerReference,
    the marker that stops a second invoice).
    """
    errors = []
    for number, row in enumerate(rows, start=1):
        target = row.get("target_path", "")
        if field_key(target) in fixed_by_engine:
            problem = (
                f"kashforce sets {target} itself, so no row may write it: it carries the "
                "marker that stops a record being made twice."
            )
            errors.append(RowError(number, target, problem))
            continue
        problems = row_problems(row) + _target_problems(row, target_fields, update_only)
        errors.extend(RowError(number, target, problem) for problem in problems)
    errors.extend(duplicate_targets(rows))
    if not update_only:
        covered = (*filled_by_flow, *fixed_by_engine)
        errors.extend(_unfilled_required(rows, target_fields, covered))
    return errors


def source_problems(rows: list[dict], source_names: set[str]) -> list[RowError]:
    """Rows that read a field the source does not have, each with a suggestion.

    `source_names` are the names a source path may start with: the object's fields and
    relationships, and what its flow adds (a customer's `PrimaryContact`). A path is checked by
    its first segment (`Contacts[?IsPrimary].Email` by `Contacts`), so nested paths pass as
    long as the part a query asks for exists; a row reading a field that does not exist would
    make every query of its flow fail (Salesforce's INVALID_FIELD)."""
    errors = []
    for number, row in enumerate(rows, start=1):
        for path in _source_paths(row):
            head = re.split(r"[.\[]", path, maxsplit=1)[0]
            if head and head not in source_names:
                errors.append(
                    RowError(
                        number,
                        row.get("target_path", ""),
                        f"the source has no field {head!r}.{_did_you_mean(head, source_names)}",
                    )
                )
    return errors


def _source_paths(row: dict) -> list[str]:
    params = row.get("params") or {}
    when = params.get("when") if isinstance(params.get("when"), dict) else {}
    candidates = [
        row.get("source_path", ""),
        *(params.get("sources") or []),
        *(params.get("fallbacks") or []),
        when.get("path", ""),
    ]
    return [path for path in candidates if isinstance(path, str) and path]


def source_names_from_describe(describe: dict) -> set[str]:
    """The names a Salesforce source path may start with: fields and parent relationships."""
    names = set()
    for item in describe.get("fields", []):
        names.add(item["name"])
        if item.get("relationshipName"):
            names.add(item["relationshipName"])
    return names


def kashflow_source_names(object_name: str) -> set[str]:
    """The top-level names of a KashFlow object (`Contacts[].Email` gives `Contacts`)."""
    return {re.split(r"[.\[]", key, maxsplit=1)[0] for key in KASHFLOW_FIELDS.get(object_name, {})}


def _target_problems(row: dict, target_fields: dict, update_only: bool) -> list[str]:
    target = row.get("target_path", "")
    if not target:
        return ["it does not say which target field to write."]
    info = target_fields.get(field_key(target))
    if info is None:
        return [
            f"the target has no field {target!r}.{_did_you_mean(field_key(target), target_fields)}"
        ]
    if not info.createable and not info.updateable:
        return ["this field is read-only in the target."]
    if update_only and not info.updateable:
        return ["this field cannot be changed once the record exists."]
    if row.get("transform") == "truncate" and not (row.get("params") or {}).get("length"):
        return [] if info.length else ["the target field has no length, so say what to cut to."]
    return []


def duplicate_targets(rows: list[dict]) -> list[RowError]:
    """Two rows may fill one field only when each has a condition (one for each case)."""
    errors, first_row = [], {}
    for number, row in enumerate(rows, start=1):
        target = row.get("target_path", "")
        conditional = "when" in (row.get("params") or {})
        if target in first_row and not (conditional and first_row[target][1]):
            problem = (
                f"{target} is already filled by row {first_row[target][0]}; "
                "remove one, or give each a condition."
            )
            errors.append(RowError(number, target, problem))
        first_row.setdefault(target, (number, conditional))
    return errors


def _unfilled_required(rows: list[dict], target_fields: dict, filled_by_flow) -> list[RowError]:
    covered = {field_key(row.get("target_path", "")) for row in rows} | set(filled_by_flow)
    return [
        RowError(None, name, "the target requires this field, and no row fills it.")
        for name, info in target_fields.items()
        if info.required and name not in covered
    ]


# --------------------------------------------------------------------------------------------
# Target fields


def salesforce_fields_from_describe(describe: dict) -> dict[str, FieldInfo]:
    """FieldInfo by field name from an sObject describe (GET /sobjects/<Object>/describe)."""
    return {
        item["name"]: FieldInfo(
            type=item.get("type", "string"),
            length=item.get("length") or None,
            required=_required_on_create(item),
            createable=bool(item.get("createable")),
            updateable=bool(item.get("updateable")),
        )
        for item in describe.get("fields", [])
    }


def _required_on_create(item: dict) -> bool:
    # Salesforce has no "required" flag: a createable field that cannot be null and gets no
    # default on create is required. Booleans are never null (they default to false).
    return (
        bool(item.get("createable"))
        and not item.get("nillable", True)
        and not item.get("defaultedOnCreate", False)
        and item.get("type") != "boolean"
    )


def _kf(field_type: str = "string", required: bool = False, read_only: bool = False) -> FieldInfo:
    return FieldInfo(field_type, None, required, not read_only, not read_only)


def _address_fields(prefix: str, with_name: bool = False) -> dict[str, FieldInfo]:
    names = ["Line1", "Line2", "Line3", "Line4", "PostCode", "CountryCode"]
    fields = {f"{prefix}.{name}": _kf() for name in names}
    fields[f"{prefix}.CountryName"] = _kf(read_only=True)  # derived from CountryCode
    if with_name:
        fields[f"{prefix}.Name"] = _kf()
    return fields


# KashFlow publishes no field lengths, so nothing here is cut automatically. From the API
# reference §4; lists use `[]` (Contacts[].Email is Contacts.0.Email in a target path).
KASHFLOW_FIELDS: dict[str, dict[str, FieldInfo]] = {
    "Customer": {
        "Id": _kf("int", read_only=True),
        # Required by KashFlow, but made by the flow (a deterministic code), not by the mapping.
        "Code": _kf(required=True),
        "Name": _kf(required=True),
        **{name: _kf() for name in ["Note", "Email", "TelephoneNumber", "MobileNumber"]},
        **{name: _kf() for name in ["FaxNumber", "Website", "VATNumber"]},
        "DefaultCustomerReference": _kf(),
        "DefaultNominalCode": _kf("int"),
        "DiscountRate": _kf("decimal"),
        "UseCustomDeliveryAddress": _kf("boolean"),
        "IsArchived": _kf("boolean"),
        "Currency.Code": _kf(),
        "PaymentTerms.Days": _kf("int"),
        "PaymentTerms.Type": _kf(),
        **{f"Contacts[].{name}": _kf() for name in ["Name", "Title", "Firstname", "LastName"]},
        **{f"Contacts[].{name}": _kf() for name in ["Telephone", "Mobile", "Fax", "Email"]},
        "Contacts[].Website": _kf(),
        "Contacts[].IsPrimary": _kf("boolean"),
        "Contacts[].ReceiveEmails": _kf("boolean"),
        **_address_fields("Addresses[]"),
        **_address_fields("DeliveryAddresses[]", with_name=True),
        **{name: _kf("datetime", read_only=True) for name in ["CreatedDate", "LastUpdatedDate"]},
        "OutstandingBalance": _kf("decimal", read_only=True),
    },
    "Invoice": {
        "Id": _kf("int", read_only=True),
        "Number": _kf("int"),
        "CustomerCode": _kf(required=True),
        "CustomerReference": _kf(),
        "IssuedDate": _kf("date", required=True),
        "DueDate": _kf("date"),
        "Currency.Code": _kf(),
        "Currency.ExchangeRate": _kf("decimal"),
        **_address_fields("Address"),
        **_address_fields("DeliveryAddress", with_name=True),
        "UseCustomDeliveryAddress": _kf("boolean"),
        "ProjectNumber": _kf("int"),
        "LineItems": _kf("list"),  # mapped line by line through InvoiceLine, set by the flow
        "PaymentLines": _kf("list"),
        **{name: _kf(read_only=True) for name in ["CustomerName", "Status", "Permalink"]},
        **{
            name: _kf("decimal", read_only=True)
            for name in ["NetAmount", "VATAmount", "GrossAmount", "TotalPaidAmount", "DueAmount"]
        },
        "PaidDate": _kf("date", read_only=True),
    },
    "InvoiceLine": {
        "Number": _kf("int"),
        "Description": _kf(required=True),
        "Quantity": _kf("decimal", required=True),
        "Rate": _kf("decimal", required=True),
        "VATLevel": _kf("decimal"),
        "VATAmount": _kf("decimal"),
        "VATExempt": _kf("boolean"),
        "NominalCode": _kf("int", required=True),
        "ProductCode": _kf(),
        "ProjectNumber": _kf("int"),
        "TaxCode": _kf(),
        **{name: _kf(read_only=True) for name in ["NominalName", "ProductName"]},
    },
    "PaymentLine": {
        "Id": _kf("int", read_only=True),
        "Date": _kf("date", required=True),
        "Amount": _kf("decimal", required=True),
        "Method": _kf("int", required=True),  # a payment method's id
        "AccountId": _kf("int", required=True),  # a bank account's Id, not its nominal Code
        "Reference": _kf(),
        "Note": _kf(),
        "InvoiceNumber": _kf("int", read_only=True),
        "Permalink": _kf(read_only=True),
    },
    "Product": {
        "Id": _kf("int", read_only=True),
        "Code": _kf(required=True),
        "NominalCode": _kf("int", required=True),
        "Name": _kf(required=True),
        "Description": _kf(),
        **{name: _kf("decimal") for name in ["Price", "WholeSalePrice", "VATRate"]},
        **{name: _kf("decimal") for name in ["QuantityInStock", "StockWarningQuantity"]},
        **{name: _kf("boolean") for name in ["AutoFillLineItem", "ManageStockLevel"]},
        **{name: _kf("boolean") for name in ["IsDefault", "InUse"]},
    },
}


# What a KashFlow list answers for each record (reference §4.1): a summary. A mapped source
# field outside it is read from the full record (GET /customers/{code}) by the flow.
KASHFLOW_SUMMARY_FIELDS: dict[str, frozenset[str]] = {
    "Customer": frozenset(
        [
            "Id",
            "Code",
            "Name",
            "TotalPaidAmount",
            "OutstandingBalance",
            "IsSchedule",
            "SourceName",
            "DefaultNominalCode",
            "IsArchived",
            "VATNumber",
            "TradeBorderType",
            "IsCISReverseCharge",
            "ApplyWithholdingTax",
            "CustomerKey",
            "Contacts",
            "Addresses",
            "Currency",
        ]
    ),
}


def source_paths(row: dict) -> list[str]:
    """Every source path a mapping row reads: its source, `sources`, `fallbacks`, `when`."""
    params = row.get("params") or {}
    paths = [row.get("source_path") or ""]
    paths += [item for item in params.get("sources") or [] if isinstance(item, str)]
    paths += [item for item in params.get("fallbacks") or [] if isinstance(item, str)]
    when = params.get("when") or []
    paths += [c.get("path", "") for c in (when if isinstance(when, list) else [when])]
    return [path for path in paths if path]


def top_field(path: str) -> str:
    """The record field a path starts from: "Contacts[?IsPrimary].Email" -> "Contacts"."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def needs_full_record(source_object: str, path: str) -> bool:
    """True when `path` of a KashFlow record is not in its list summary (only the full record
    has it); False for summary fields and for objects listed whole."""
    system, _, name = source_object.partition(".")
    summary = KASHFLOW_SUMMARY_FIELDS.get(name) if system == "kashflow" else None
    return bool(summary) and bool(path) and top_field(path) not in summary


# --------------------------------------------------------------------------------------------
# Preview helpers


def _flatten(payload: object, prefix: str = "") -> dict[str, object]:
    if isinstance(payload, dict) and payload:
        items = payload.items()
    elif isinstance(payload, list) and payload:
        items = ((str(index), item) for index, item in enumerate(payload))
    else:
        return {prefix: payload} if prefix else {}
    flat: dict[str, object] = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def _same_value(before: object, after: object) -> bool:
    """Equal as a person would see them: null and blank alike, 120.0 and 120.00 alike."""
    if is_empty(before) and is_empty(after):
        return True
    if _is_plain_number(before) and _is_plain_number(after):
        return _decimal_or_none(before) == _decimal_or_none(after)
    return _as_text(before) == _as_text(after)


def _is_plain_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _decimal_or_none(value: object) -> Decimal | None:
    try:
        return to_decimal(value)
    except _RowProblem:
        return None
