"""KashFlow's wire formats: money, dates, errors and the JSON text itself.

Money goes out as JSON numbers with four decimals (`117.5000`), as KashFlow's SQL `money`
columns do; the stdlib encoder cannot write a Decimal as a number, so `dumps` does it. Input is
parsed with `parse_float=Decimal` so no amount ever passes through a float.
"""

import json
import re
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

FOUR_PLACES = Decimal("0.0001")
PENNY = Decimal("0.01")
# Date-only values carry midday, as KashFlow's do ("2022-03-31 12:00:00").
MIDDAY = time(12, 0)
_DATE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?"
    r"\s*(?:Z|[+-]\d{2}:?\d{2})?$"
)


class ApiError(Exception):
    """An answer in KashFlow's error shape: {"Error": code, "Message": message}."""

    def __init__(self, status: int, code: str, message: str, commit: bool = False):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        # True when the transaction must commit anyway (a counted failed login).
        self.commit = commit

    def body(self) -> dict:
        return {"Error": self.code, "Message": self.message}


def invalid(message: str) -> ApiError:
    return ApiError(400, "ValidationError", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NotFound", message)


# -- JSON ----------------------------------------------------------------------------------------


def dumps(obj) -> bytes:
    return "".join(_encode(obj)).encode("utf-8")


def _encode(obj):
    if isinstance(obj, Decimal):
        yield str(obj.quantize(FOUR_PLACES, ROUND_HALF_UP))
    elif isinstance(obj, dict):
        yield "{"
        for index, (key, value) in enumerate(obj.items()):
            yield ("," if index else "") + json.dumps(key) + ":"
            yield from _encode(value)
        yield "}"
    elif isinstance(obj, list | tuple):
        yield "["
        for index, value in enumerate(obj):
            if index:
                yield ","
            yield from _encode(value)
        yield "]"
    else:
        yield json.dumps(obj)


def loads(body: bytes):
    """The request body as JSON with Decimal numbers; ApiError 400 when it is not JSON."""
    try:
        return json.loads(body.decode("utf-8") or "null", parse_float=Decimal)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}.") from exc


# -- Reading fields ------------------------------------------------------------------------------


class Fields:
    """A request object read case-insensitively, as .NET model binding does.

    Each accessor names the field in its ValidationError, so a client sees what to fix.
    """

    def __init__(self, raw, where: str = ""):
        if not isinstance(raw, dict):
            raise invalid(f"{where or 'The request body'} must be a JSON object.")
        self.raw = {key.lower(): value for key, value in raw.items()}
        self.where = where

    def has(self, name: str) -> bool:
        return name.lower() in self.raw

    def _get(self, name: str):
        return self.raw.get(name.lower())

    def _label(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def text(self, name: str, default: str = "") -> str:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool | dict | list):
            raise invalid(f"{self._label(name)} must be a string.")
        return str(value)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if value in (0, 1):  # old examples send VATExempt as 0/1
            return bool(value)
        raise invalid(f"{self._label(name)} must be true or false.")

    def integer(self, name: str, default: int = 0) -> int:
        value = self._get(name)
        if value is None or value == "":
            return default
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            number = None
        if isinstance(value, bool) or number is None or number != number.to_integral_value():
            raise invalid(f"{self._label(name)} must be a whole number.")
        return int(number)

    def money(self, name: str, default: Decimal | None = Decimal(0)) -> Decimal | None:
        value = self._get(name)
        if value is None or value == "":
            return default
        try:
            if isinstance(value, bool):
                raise InvalidOperation
            return Decimal(str(value))
        except InvalidOperation:
            raise invalid(f"{self._label(name)} must be a number.") from None

    def when(self, name: str, default: datetime | None = None) -> datetime | None:
        value = self._get(name)
        if value is None or value == "":
            return default
        return parse_datetime(str(value), self._label(name))

    def items(self, name: str) -> list:
        value = self._get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise invalid(f"{self._label(name)} must be a list.")
        return value

    def child(self, name: str) -> "Fields":
        value = self._get(name)
        return Fields(value if value is not None else {}, self._label(name))


# -- Dates ---------------------------------------------------------------------------------------


def parse_datetime(text: str, field: str) -> datetime:
    """Accepts "YYYY-MM-DD", "YYYY-MM-DD HH:MM[:SS]", the ISO "T" form, fractions and a trailing
    offset (ignored, as the reference advises); a date alone means midday."""
    match = _DATE.match(text.strip())
    if not match:
        raise invalid(f"{field} is not a valid date: {text!r}.")
    year, month, day, hour, minute, second = match.groups()
    try:
        if hour is None:
            return datetime.combine(date(int(year), int(month), int(day)), MIDDAY)
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError:
        raise invalid(f"{field} is not a valid date: {text!r}.") from None


def format_datetime(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else None


def from_db(text: str | None) -> datetime | None:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S") if text else None


# -- Money ---------------------------------------------------------------------------------------


def to_pence4(amount: Decimal) -> int:
    """Money as an integer count of 1/10000 pounds: exact sums in SQLite."""
    return int(amount.quantize(FOUR_PLACES, ROUND_HALF_UP).scaleb(4))


def from_pence4(units: int | None) -> Decimal:
    return Decimal(units or 0).scaleb(-4).quantize(FOUR_PLACES)


def round_money(amount: Decimal) -> Decimal:
    return amount.quantize(PENNY, ROUND_HALF_UP)
