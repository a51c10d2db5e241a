"""A typed face on google-re2 (module ``re2``, no type information of its own).

Only bytes patterns and bytes subjects are used, through the extension's ``RE2.Match`` (what
``re2.compile(...).search`` calls after re-encoding a ``str`` subject on every call, which
would make repeated searches quadratic, and after building a Python match object, which costs
more than the search): the text is encoded to UTF-8 once per call of the detector and every
search starts at a byte offset without copying the subject. Pin google-re2 exactly: ``_re2``
is the extension module of that package.
"""

from __future__ import annotations

from typing import Any

import re2  # type: ignore[import-untyped]

RE2_ERROR: type[Exception] = re2.error
MAX_MEM = 64 << 20  # bytes of DFA cache per compiled expression (RE2's default is 8 MiB)
UNANCHORED: object = re2._re2.RE2.Anchor.UNANCHORED
ANCHOR_START: object = re2._re2.RE2.Anchor.ANCHOR_START
NO_MATCH = (-1, -1)


class Regex:
    """One compiled RE2 expression over UTF-8 bytes."""

    __slots__ = ("groups", "raw_match")

    def __init__(self, pattern: str) -> None:
        """Raises :data:`RE2_ERROR` with RE2's message when ``pattern`` is not valid RE2."""
        options = re2.Options()
        options.log_errors = False
        options.max_mem = MAX_MEM
        compiled: Any = re2._re2.RE2(pattern.encode("utf-8"), options)
        if not compiled.ok():
            raise RE2_ERROR(compiled.error())
        self.groups = int(compiled.NumberOfCapturingGroups())
        # raw_match(anchor, buf, pos, end) -> Spans: the whole match (index 0) and every group
        # ((-1, -1): did not take part); [0] == NO_MATCH when there is none.
        self.raw_match: Any = compiled.Match


def error_text(exc: Exception) -> str:
    """RE2's messages arrive as bytes inside the exception's args."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
