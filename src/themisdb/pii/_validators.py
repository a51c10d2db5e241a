"""The fixed set of validators a pattern may name (``validator:`` in the pattern file).

A validator sees one candidate the regular expression found: the UTF-8 buffer of the whole
text and the candidate's byte span. It returns the byte offset where the accepted value ends
(usually ``end``; less to trim, e.g. the full stop after a URL; more only for ``url``, which
extends a candidate over the rest of a long URL), or None to reject the candidate. Every
validator is linear in the length of the candidate.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

Validator = Callable[[bytes, int, int], int | None]

# ISO 13616 registry: IBAN length per country (letters included).
IBAN_LENGTHS: Mapping[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip

# UK National Insurance number prefixes that are never allocated.
NINO_BAD_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
NINO_BAD_FIRST = frozenset("DFIQUV")
NINO_BAD_SECOND = frozenset("DFIOQUV")

# Characters after which a URL does not continue, and punctuation that ends a sentence
# rather than a URL.
_URL_TAIL = re.compile(rb"[^\s<>\"'`{}|\\^]*")
_URL_TRAILING = b".,;:!?)]}'\""


def _text(buf: bytes, start: int, end: int) -> str:
    return buf[start:end].decode("utf-8", "surrogatepass")


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # d * 2, minus 9 when above 9
_NOT_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57)


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits."""
    values = [ord(ch) - 48 for ch in reversed(digits)]
    total = sum(values[0::2]) + sum(_LUHN_DOUBLED[d] for d in values[1::2])
    return total % 10 == 0


def luhn(buf: bytes, start: int, end: int) -> int | None:
    raw = buf[start:end]  # the expression matches ASCII digits, spaces and hyphens only
    digits = raw.translate(None, _NOT_DIGITS)
    separators = set(raw.translate(None, b"0123456789"))
    if len(separators) > 1 or not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return None
    return end if luhn_ok(digits.decode("ascii")) else None


def iban_ok(compact: str) -> bool:
    """ISO 13616: known country, that country's length, and ISO 7064 MOD 97-10 == 1."""
    if len(compact) < 5 or not compact.isascii() or not compact.isalnum():
        return False
    country = compact[:2]
    if IBAN_LENGTHS.get(country) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    remainder = 0
    for ch in rearranged:
        if ch.isdigit():
            remainder = (remainder * 10 + ord(ch) - 48) % 97
        elif "A" <= ch <= "Z":
            remainder = (remainder * 100 + ord(ch) - 55) % 97
        else:
            return False
    return remainder == 1


def iban(buf: bytes, start: int, end: int) -> int | None:
    """Accepts the candidate, or the prefix of it that is exactly the country's length (the
    regular expression may have taken one more group of four, e.g. a following word)."""
    value = _text(buf, start, end)
    length = IBAN_LENGTHS.get(value[:2])
    if length is None:
        return None
    seen = 0
    for i, ch in enumerate(value):
        if ch != " ":
            seen += 1
        if seen == length:
            cut = i + 1
            if cut < len(value) and value[cut] != " ":
                return None  # the value would end inside a group
            if not iban_ok(value[:cut].replace(" ", "")):
                return None
            return start + len(value[:cut].encode("utf-8"))
    return None


def us_ssn(buf: bytes, start: int, end: int) -> int | None:
    """US SSN: area not 000, 666 or 900-999; group not 00; serial not 0000; one separator."""
    value = _text(buf, start, end)
    if len(value) != 11 or value[3] != value[6] or value[3] not in "- ":
        return None
    area, group, serial = value[0:3], value[4:6], value[7:11]
    if not (area + group + serial).isdigit():
        return None
    if area in {"000", "666"} or area >= "900" or group == "00" or serial == "0000":
        return None
    return end


def ip_address(buf: bytes, start: int, end: int) -> int | None:
    """Anything :mod:`ipaddress` parses (a single trailing colon dropped, a following "::"
    taken), except IPv6 with fewer than two non-empty groups
    (``::``, ``::1``: C++ scope operators and loopback, not personal data)."""
    value = _text(buf, start, end)
    if ":" not in value:
        octets = value.split(".")
        if len(octets) == 4 and all(
            o.isascii()
            and o.isdigit()
            and len(o) <= 3
            and (o == "0" or o[0] != "0")
            and int(o) <= 255
            for o in octets
        ):
            return end  # what ipaddress accepts, without its cost
        return None
    if value.endswith(":") and not value.endswith("::"):
        value, end = value[:-1], end - 1  # "fe80::1:" at the end of a clause
    if "::" not in value and buf[end : end + 2] != b"::" and value.count(":") < 6:
        return None  # "12:30:45": without "::" an address has 8 groups (6 before an IPv4 tail)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        if buf[end : end + 2] != b"::":
            return None
        try:  # "2001:db8::": the expression ends on a group, the address on "::"
            address = ipaddress.ip_address(value + "::")
        except ValueError:
            return None
        end += 2
    if address.version == 6 and sum(1 for g in value.split(":") if g) < 2:
        return None
    return end


def uk_nino(buf: bytes, start: int, end: int) -> int | None:
    compact = _text(buf, start, end).replace(" ", "").upper()
    if len(compact) != 9:
        return None
    prefix = compact[:2]
    if prefix in NINO_BAD_PREFIXES or prefix[0] in NINO_BAD_FIRST or prefix[1] in NINO_BAD_SECOND:
        return None
    if not compact[2:8].isdigit() or compact[8] not in "ABCD":
        return None
    return end


def de_tax_id_ok(digits: str) -> bool:
    """German Steuerliche Identifikationsnummer: 11 digits, no leading zero; in the first ten
    exactly one digit occurs twice or three times (three never all adjacent) and every other
    digit at most once; check digit ISO 7064 MOD 11,10."""
    if len(digits) != 11 or not digits.isascii() or not digits.isdigit() or digits[0] == "0":
        return False
    body = digits[:10]
    counts = [body.count(d) for d in set(body)]
    repeated = [c for c in counts if c > 1]
    if len(repeated) != 1 or repeated[0] > 3:
        return False
    if any(body[i] == body[i + 1] == body[i + 2] for i in range(8)):
        return False
    product = 10
    for ch in body:
        total = (int(ch) + product) % 10 or 10
        product = (total * 2) % 11
    check = 11 - product
    if check == 10:
        check = 0
    return check == int(digits[10])


def de_tax_id(buf: bytes, start: int, end: int) -> int | None:
    value = _text(buf, start, end).replace(" ", "")
    return end if de_tax_id_ok(value) else None


def phone(buf: bytes, start: int, end: int) -> int | None:
    """7 to 15 digits (E.164's maximum), not all the same digit."""
    digits = [ch for ch in _text(buf, start, end) if ch.isdigit()]
    if not 7 <= len(digits) <= 15 or len(set(digits)) == 1:
        return None
    return end


def email(buf: bytes, start: int, end: int) -> int | None:
    """RFC 5321 limits: at most 254 characters; no empty local-part atoms."""
    value = _text(buf, start, end)
    local, _, domain = value.rpartition("@")
    if len(value) > 254 or not local or local[0] == "." or local[-1] == "." or ".." in local:
        return None
    if any(not label or label[0] == "-" or label[-1] == "-" for label in domain.split(".")):
        return None
    return end


def url(buf: bytes, start: int, end: int) -> int | None:
    """Extends the candidate over the rest of the URL (the regular expression is bounded in
    length, URLs are not), then drops sentence punctuation at its end."""
    tail = _URL_TAIL.match(buf, end)
    stop = tail.end() if tail else end
    opens, closes = buf.count(b"(", start, stop), buf.count(b")", start, stop)
    while stop > start and buf[stop - 1] in _URL_TRAILING:
        if buf[stop - 1] == 0x29:  # ")": kept when it closes a "(" of the URL (Wikipedia style)
            if opens >= closes:
                break
            closes -= 1
        stop -= 1
    return stop if stop - start > len(b"http://") else None


VALIDATORS: Mapping[str, Validator] = {
    "luhn": luhn,
    "iban": iban,
    "us_ssn": us_ssn,
    "ip_address": ip_address,
    "uk_nino": uk_nino,
    "de_tax_id": de_tax_id,
    "phone": phone,
    "email": email,
    "url": url,
}
