"""Host-name matching, written once: exact name, then a single-label wildcard, then the default.

The SNI table (``tls.TLSTable``) and the Host routing (``http.table.HTTPTable``) both match names
with this one class. The HTTP engine answers 421 when a request's Host selects a different SNI row
than the one its TLS connection shook hands with; that check is only sound while both sides match
names the same way, so there is exactly one way here.

Names are looked up as given: callers pass the canonical form (lower case, no trailing dot; see
``clienthello._host_name`` and ``http.table.host_name``), which is also the form ``validate()``
requires of configured hosts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

WILDCARD = "*."
DEFAULT = ""  # the configured name of the catch-all row (virtual hosts only)


class HostTable(Generic[T]):
    """Rows keyed by configured host name, built once per snapshot and read-only after.

    ``*.example.com`` matches exactly one label in front of ``example.com`` (``a.example.com``,
    not ``example.com`` nor ``a.b.example.com``), as TLS certificates and ingress-nginx do. A row
    named ``""`` is the default, returned when nothing else matches; only tables built with
    ``allow_default`` have one (the SNI table has none: no row means the default certificate).
    """

    __slots__ = ("_default", "_exact", "_wildcard")

    def __init__(self, rows: Iterable[tuple[str, T]], allow_default: bool = False) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}  # key: the suffix after "*."
        self._default: T | None = None
        for name, row in rows:
            if name.startswith(WILDCARD):
                self._wildcard[name[len(WILDCARD):]] = row
            elif name == DEFAULT:
                if allow_default:
                    self._default = row
            else:
                self._exact[name] = row

    def lookup(self, name: str | None) -> T | None:
        """The row ``name`` selects: exact, then single-label wildcard, then the default (or None)."""
        if name:
            row = self._exact.get(name)
            if row is not None:
                return row
            first, dot, parent = name.partition(".")
            if first and dot and parent:  # the wildcard stands for one whole, non-empty label
                row = self._wildcard.get(parent)
                if row is not None:
                    return row
        return self._default

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcard) + (self._default is not None)
