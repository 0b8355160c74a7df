"""Request-path normalisation (pure): one canonical spelling of a path before it is routed.

A path has many spellings (``/admin``, ``/%61dmin``, ``//admin``, ``/x/../admin``, ``/admin;x``) and
the backend's framework decodes all of them to the same resource. If the proxy routed the raw
spelling, ``/admin`` -> A and ``/`` -> B would let every other spelling of ``/admin`` reach B. So
the edge routes on the canonical form and forwards that same form, so the backend sees what was
routed. The rules (RFC 3986 6.2.2 plus what frameworks do beyond it):

- percent-encoded unreserved characters (``A-Z a-z 0-9 - . _ ~``) and the sub-delimiters that mean
  nothing in a path segment (``! $ & ' ( ) * + , = : @``) are decoded: every framework decodes them,
  so ``%61dmin`` and ``admin`` are one name. Every other escape keeps its meaning and is written with
  upper-case hex (``%c3%a9`` -> ``%C3%A9``); a raw byte that is not allowed in a path (``"``, ``{``,
  ``|``, ...) is percent-encoded, so raw and escaped spellings also agree;
- dot segments (``.``, ``..``, also spelled ``%2E``) are removed (RFC 3986 5.2.4) and runs of
  ``/`` merged into one (Tomcat, Spring, nginx ``merge_slashes``, many routers do the same);
- refused with 400, because a backend could read them as something else: invalid percent-encoding,
  ``%2F`` (``/``), ``%5C`` (``\\``) and ``%00`` (NUL) anywhere (some servers decode them before
  splitting segments, some after), a raw ``\\`` (Windows/IIS and some Java containers treat it as
  ``/``), and ``..`` that would climb above the root.

``;`` path parameters: Tomcat, Jetty and Spring strip ``;params`` from every segment before they
match (``/admin;x`` and ``/public/..;/admin`` both reach ``/admin`` there), while most other
frameworks keep them as part of the name. Refusing every ``;`` would break ``;jsessionid=`` URLs, so:

- the *routing* path is the canonical path with each segment's ``;params`` removed (and the empty
  segments that leaves merged), so ``/admin;x`` routes as ``/admin``: it reaches the ``/admin``
  backend on every framework, never the ``/`` one;
- a dot segment carrying parameters (``..;x``, ``.;``) is refused: it is a dot segment for Tomcat
  and an ordinary name for others, and no single routing answer is right for both;
- the *forwarded* path keeps its parameters (canonicalised like the rest), so session ids survive;
- an escaped ``%3B`` is a literal character everywhere (Tomcat strips params before decoding) and
  stays escaped.

The common, already-canonical path costs one precompiled ``fullmatch``.
"""

from __future__ import annotations

import re

# Already canonical: "/"-separated non-empty segments of unreserved/sub-delim/":"/"@" bytes (no "%",
# ";" or "\"), none of them "." or "..", optionally a trailing "/".
_CANONICAL = re.compile(rb"(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9\-._~!$&'()*+,=:@]+)*/?")

_HEXDIGITS = b"0123456789ABCDEFabcdef"
# Bytes written as themselves in a canonical path segment (";" is handled separately).
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@")
_REFUSED_ESCAPES = {0x2F: "encoded '/' (%2F)", 0x5C: "encoded '\\' (%5C)", 0x00: "encoded NUL (%00)"}


class PathError(ValueError):
    """A path that cannot be normalised safely (the client gets 400 with this reason)."""


def _canonical_segment(seg: bytes) -> bytes:
    """Decode what may be decoded, upper-case the rest's hex, escape raw bytes not allowed in a path."""
    if not seg or (b"%" not in seg and all(b in _PLAIN or b == 0x3B for b in seg)):
        return seg
    out = bytearray()
    i = 0
    n = len(seg)
    while i < n:
        b = seg[i]
        if b == 0x25:  # "%"
            hx = seg[i + 1:i + 3]
            if len(hx) != 2 or hx[0] not in _HEXDIGITS or hx[1] not in _HEXDIGITS:
                raise PathError("invalid percent-encoding in path")
            value = int(hx, 16)
            if value in _REFUSED_ESCAPES:
                raise PathError(_REFUSED_ESCAPES[value] + " in path")
            if value in _PLAIN:
                out.append(value)
            else:
                out += b"%%%02X" % value
            i += 3
            continue
        if b == 0x5C:
            raise PathError("'\\' in path")
        if b in _PLAIN or b == 0x3B:
            out.append(b)
        else:
            out += b"%%%02X" % b
        i += 1
    return bytes(out)


def normalize_path(raw: bytes) -> tuple[bytes, bytes]:
    """``(forwarded, routing)`` for an origin-form path (no query), both starting with ``/``.

    ``forwarded`` is the canonical path with its ``;`` parameters; ``routing`` is the same without
    them (identical when there are none). Raises ``PathError`` for what cannot be normalised safely.
    """
    if _CANONICAL.fullmatch(raw) is not None:
        return raw, raw
    if not raw.startswith(b"/"):
        raise PathError("path does not start with '/'")
    segments = raw.split(b"/")[1:]
    last = len(segments) - 1
    out: list[bytes] = []
    trailing = False
    for index, seg in enumerate(segments):
        seg = _canonical_segment(seg)
        name, semi, _ = seg.partition(b";")
        if name in (b".", b".."):
            if semi:
                raise PathError("dot segment with ';' parameters in path")
            if name == b"..":
                if not out:
                    raise PathError("'..' above the root of the path")
                out.pop()
            trailing = True  # "/a/." and "/a/b/.." end in "/" (RFC 3986 5.2.4)
            continue
        if not seg:
            trailing = index == last
            continue
        out.append(seg)
        trailing = False
    forwarded = b"/" + b"/".join(out) + (b"/" if trailing and out else b"")
    if b";" not in forwarded:
        return forwarded, forwarded
    names = [name for name in (seg.partition(b";")[0] for seg in out) if name]
    routing = b"/" + b"/".join(names) + (b"/" if (trailing or out[-1].startswith(b";")) and names else b"")
    return forwarded, routing



def route_path(path: str) -> str:
    """A configured route path in the routing form requests are matched in (computed per snapshot).

    ``/%7Euser`` matches what a client's ``/~user`` or ``/%7euser`` normalises to, and a route path
    with ``;params`` routes on its names, as requests do. A path that cannot be normalised (the
    controller refuses most) is kept as written: no normalised request can equal it.
    """
    try:
        return normalize_path(path.encode("latin-1"))[1].decode("latin-1")
    except (PathError, UnicodeEncodeError):
        return path
