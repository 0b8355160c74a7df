"""How a snapshot travels to the data plane without resending megabytes for one change.

Two independent savings, both decided here as pure functions so the controller (encoder) and the
data plane (decoder) cannot drift apart:

* **Compression.** A push body may carry ``Content-Encoding: gzip`` or ``deflate``. The data plane
  inflates it in bounded steps and refuses, with a clear reason, a body that would inflate past its
  limit (a decompression bomb costs at most ``limit`` bytes of memory, never more) or that is not a
  valid stream.
* **Deltas.** Certificates and CA bundles are content-addressed and are most of a snapshot's bytes
  (private keys and certificates do not compress). A delta (``PATCH /snapshot``) is the whole
  snapshot except the certificate material the data plane already holds, named by id, plus the
  checksum it must already serve (``base``). The data plane rebuilds the full snapshot and applies
  it only if it is exactly the snapshot the controller rendered (the checksum in the body is
  recomputed, as for any push); a data plane whose checksum is not ``base`` answers 412 and the
  controller pushes the full snapshot instead.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dataplane.snapshot import Snapshot, SnapshotFormatError

ENCODINGS = ("gzip", "deflate")
_CHUNK = 64 * 1024


class BodyError(ValueError):
    """A push body the data plane cannot read; ``status`` is the HTTP answer (4xx)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class BaseMismatch(ValueError):
    """A delta built on a snapshot this data plane does not serve (answered 412: send it all)."""


def compress(body: bytes, level: int = 6) -> bytes:
    """gzip, as sent with ``Content-Encoding: gzip``."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding``, never larger than ``limit`` bytes.

    Raises ``BodyError``: 415 for an encoding we do not speak, 413 for a body that inflates past
    ``limit`` (checked while inflating, so a bomb never allocates more than the limit), 400 for a
    corrupt or truncated stream.
    """
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        if len(body) > limit:
            raise BodyError(413, f"body of {len(body)} bytes is larger than the limit of {limit}")
        return body
    if coding not in ENCODINGS:
        raise BodyError(415, f"Content-Encoding {coding!r} is not supported (use gzip, deflate or none)")
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    pending = body
    try:
        while True:
            room = limit - len(out)
            # Ask for at most one byte past the limit: getting it proves the body is too large.
            # (Never ``flush()``: its argument is a buffer hint, not a bound.)
            chunk = inflater.decompress(pending, min(_CHUNK, room + 1))
            out += chunk
            if len(out) > limit:
                raise BodyError(413, f"{coding} body inflates past the limit of {limit} bytes")
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and not chunk):
                break
    except zlib.error as exc:
        raise BodyError(400, f"{coding} body is corrupt: {exc}") from exc
    if not inflater.eof:
        raise BodyError(400, f"{coding} body is truncated")
    if inflater.unused_data:
        raise BodyError(400, f"{coding} body has trailing bytes after the compressed stream")
    return bytes(out)


def make_delta(base: Snapshot, target: Snapshot) -> dict[str, Any]:
    """A ``PATCH /snapshot`` body turning ``base`` (which the data plane serves) into ``target``.

    ``target`` must carry its checksum: the data plane applies the rebuilt snapshot only if it hashes
    to exactly that.
    """
    if not target.checksum or not base.checksum:
        raise ValueError("a delta needs the checksums of both snapshots")
    have_certs = {c.id for c in base.certificates}
    have_cas = {c.id for c in base.ca_bundles}
    body = target.to_dict()
    body["certificates"] = [c for c in body["certificates"] if c["id"] not in have_certs]
    body["ca_bundles"] = [c for c in body["ca_bundles"] if c["id"] not in have_cas]
    return {
        "base": base.checksum,
        "keep_certificates": sorted({c.id for c in target.certificates} & have_certs),
        "keep_ca_bundles": sorted({c.id for c in target.ca_bundles} & have_cas),
        "snapshot": body,
    }


def apply_delta(current: Snapshot | None, current_checksum: str | None, delta: Any) -> Snapshot:
    """The full snapshot a delta describes, built on what this data plane serves.

    Raises ``BaseMismatch`` when the delta was built on another snapshot (or names material this
    data plane does not hold) and ``SnapshotFormatError`` when the body is not a delta at all. The
    result still goes through the ordinary validation, which checks its checksum.
    """
    if not isinstance(delta, Mapping):
        raise SnapshotFormatError("delta must be a JSON object")
    unknown = set(delta) - {"base", "keep_certificates", "keep_ca_bundles", "snapshot"}
    if unknown:
        raise SnapshotFormatError(f"unknown delta fields: {sorted(unknown)}")
    base = delta.get("base")
    keep_certs, keep_cas = delta.get("keep_certificates", []), delta.get("keep_ca_bundles", [])
    if not isinstance(base, str) or not base:
        raise SnapshotFormatError("delta.base must be the checksum it was built on")
    if not all(isinstance(x, list) and all(isinstance(i, str) for i in x) for x in (keep_certs, keep_cas)):
        raise SnapshotFormatError("delta.keep_certificates and delta.keep_ca_bundles must be lists of ids")
    if current is None or current_checksum != base:
        raise BaseMismatch(f"delta is built on {base}, this data plane serves {current_checksum}")
    snapshot = Snapshot.from_dict(delta.get("snapshot"))  # type: ignore[arg-type]  # from_dict checks the type
    if not snapshot.checksum:
        raise SnapshotFormatError("a delta's snapshot must carry its checksum")
    certs = {c.id: c for c in current.certificates}
    cas = {c.id: c for c in current.ca_bundles}
    missing = [i for i in keep_certs if i not in certs] + [i for i in keep_cas if i not in cas]
    if missing:
        raise BaseMismatch(f"delta keeps material this data plane does not hold: {missing[:5]}")
    return replace(snapshot, certificates=snapshot.certificates + tuple(certs[i] for i in keep_certs),
                   ca_bundles=snapshot.ca_bundles + tuple(cas[i] for i in keep_cas))
