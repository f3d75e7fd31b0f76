"""``fieldValidation=Strict|Warn|Ignore``: what a write does about fields the schema does not know.

The registry prunes unknown fields on every write and hands their paths to the request's
``FieldValidation``, as the REST layer does with the keys a body wrote twice: Strict refuses
the request (400, every field listed, as kube's strict decoder does), Warn collects ``Warning``
headers for the response, Ignore stays silent. A request without the parameter is Warn, kube's
default since 1.27; in-process writers pass none at all.
"""

from __future__ import annotations

from kcp_virtual.framework import errors

STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"
MODES = (IGNORE, WARN, STRICT)


class FieldValidation:
    __slots__ = ("mode", "warnings")

    def __init__(self, mode: str = WARN):
        if mode not in MODES:
            raise errors.BadRequest(f'fieldValidation: Unsupported value: "{mode}": supported values: "Ignore", '
                                    '"Strict", "Warn"')
        self.mode = mode
        self.warnings: list[str] = []

    @classmethod
    def from_query(cls, value: str | None) -> "FieldValidation":
        return cls(value or WARN)

    def report(self, unknown_fields: list[str]) -> None:
        """Judge the unknown fields of one object (already pruned from it)."""
        self._judge([f'unknown field "{path}"' for path in unknown_fields])

    def report_duplicates(self, duplicates) -> None:
        """Judge the body's keys written twice (``duplicate field "metadata.name"``; the last one won)."""
        self._judge(list(duplicates))

    def _judge(self, problems: list[str]) -> None:
        if not problems or self.mode == IGNORE:
            return
        if self.mode == STRICT:
            raise errors.BadRequest(f"strict decoding error: {', '.join(problems)}")
        self.warnings.extend(w for w in problems if w not in self.warnings)

    def headers(self) -> list[tuple[str, str]]:
        """``Warning`` response headers (RFC 7234 form, code 299, as kube sends them)."""
        return [("Warning", '299 - "{}"'.format(w.replace("\\", "\\\\").replace('"', '\\"')))
                for w in self.warnings]
