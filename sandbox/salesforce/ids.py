"""Salesforce record ids: 15-char base-62 bodies with a key prefix and an 18-char checksum form.

The 18-char suffix makes ids safe for case-insensitive systems: for each 5-char chunk, bit i is set
when char i is an upper-case letter, and the 5-bit number indexes CHECKSUM_ALPHABET.
"""

import re

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CHECKSUM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
# Characters 4-6 of a real id carry the pod/instance; any constant that looks plausible will do.
POD = "8d0"
ID_PATTERN = re.compile(r"^[0-9A-Za-z]{15}(?:[0-9A-Za-z]{3})?$")


def checksum(id15: str) -> str:
    suffix = ""
    for start in (0, 5, 10):
        chunk = id15[start : start + 5]
        bits = sum(1 << i for i, char in enumerate(chunk) if "A" <= char <= "Z")
        suffix += CHECKSUM_ALPHABET[bits]
    return suffix


def make_id(prefix: str, number: int) -> str:
    """The 18-char id of the number-th record with this key prefix."""
    body = ""
    while number:
        number, digit = divmod(number, 62)
        body = BASE62[digit] + body
    id15 = prefix + POD + body.rjust(9, "0")
    return id15 + checksum(id15)


def normalize(value) -> str | None:
    """The 18-char form of a 15- or 18-char id, or None when it is not a well-formed id."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        return None
    if len(value) == 15:
        return value + checksum(value)
    if checksum(value[:15]) != value[15:]:
        return None
    return value
