"""Secrets → snapshot certificate material, checked with ``cryptography`` before it ships.

The renderer refuses a bad key pair here, naming the Secret and the key, rather than letting a
data plane refuse the whole snapshot later: one broken Secret must only cost its own host.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from controller.model import Secret
from dataplane import pem as pem_blocks
from dataplane.snapshot import CABundle, Certificate, content_id

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"
CA_CRL = "ca.crl"
# PEM is printable ASCII text. cryptography skips other bytes around the blocks, OpenSSL (the data
# plane) may not: a NUL before the block made it refuse the whole snapshot, a non-UTF-8 byte crashed
# the render. Such material is refused here, naming the key.
_NOT_PEM_TEXT = re.compile(rb"[^\t\n\r\x20-\x7e]")


@dataclass(frozen=True)
class Checked:
    """A usable piece of material, or the reason it is not (``error``), plus advisory warnings."""

    certificate: Certificate | None = None
    bundle: CABundle | None = None
    error: str = ""
    warnings: tuple[str, ...] = ()
    stripped: tuple[str, ...] = ()  # PEM blocks removed from tls.crt / ca.crt (private keys): Warning


T = TypeVar("T")


class ParseCache:
    """Parsed certificate material keyed by the SHA-256 of the PEM bytes it came from (bounded, LRU).

    Parsing and checking a key pair is most of a render's time at thousands of Secrets, and a render
    re-reads every Secret although one changed. What is cached is a pure function of the bytes (the
    parsed certificate, or the parse error, and the expiry dates), never anything that depends on the
    clock or the Secret's name, so a render with a cache returns exactly what it returns without one.
    The caller owns the cache (the controller's reconciler holds one); nothing here is global.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, object] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, kind: str, parts: tuple[bytes, ...], parse: Callable[[], T]) -> T:
        digest = hashlib.sha256(kind.encode())
        for part in parts:  # length-prefixed: ("ab", "c") and ("a", "bc") must not collide
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        key = digest.digest()
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]  # type: ignore[return-value]
        self.misses += 1
        value = parse()
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value


@dataclass(frozen=True)
class _ParsedServing:
    certificate: Certificate | None
    error: str
    not_after: dt.datetime | None


@dataclass(frozen=True)
class _ParsedBundle:
    bundle: CABundle | None
    error: str
    expiries: tuple[tuple[str, dt.datetime], ...]  # (subject, not_after) of each CA


def _expiry_warnings(not_after: dt.datetime, now: int) -> list[str]:
    if now and not_after.timestamp() < now:
        return [f"certificate expired at {not_after.isoformat()}"]
    if now and not_after.timestamp() < now + 14 * 86400:
        return [f"certificate expires soon, at {not_after.isoformat()}"]
    return []


def public_blocks(secret: Secret) -> tuple[Secret, tuple[str, ...]]:
    """The Secret with only CERTIFICATE blocks in ``tls.crt`` (and CERTIFICATE / X509 CRL in ``ca.crt``),
    and a message per key for what was removed.

    A "fullchain + key" bundle in ``tls.crt`` (or a key pasted into ``ca.crt``) would otherwise reach
    the snapshot as certificate text, which ``portcullis render``, logs and the snapshot's readers
    treat as public. Only ``tls.key`` may hold a private key, and it is always redacted.
    """
    data = dict(secret.data)
    messages: list[str] = []
    for key, labels in ((TLS_CERT, pem_blocks.CERTIFICATE_LABELS), (CA_CERT, pem_blocks.CA_LABELS)):
        raw = data.get(key)
        if not raw:
            continue
        kept, dropped = pem_blocks.keep_blocks(raw, labels)
        if kept and kept != raw and not dropped:  # only text around the blocks: see _clean_text
            data[key] = kept
        if dropped:
            data[key] = kept
            what = ", ".join(sorted(set(dropped)))
            messages.append(f"Secret {secret.ref.namespace}/{secret.ref.name} key {key} holds {what} PEM "
                            f"block(s); removed, only {' and '.join(labels)} blocks are used from {key}"
                            + (" (a private key belongs in tls.key)" if "PRIVATE KEY" in what else ""))
    _clean_text(data)
    if data == secret.data:
        return secret, ()
    return replace(secret, data=data), tuple(messages)


_KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY")


def _clean_text(data: dict[str, bytes]) -> None:
    """``tls.key`` and ``ca.crl`` as their PEM blocks only, like the certificates above.

    cryptography finds a block anywhere (``x-----BEGIN ...`` on one line, after a NUL); OpenSSL in
    the data plane does not, and refused the whole snapshot for it. Shipping only the blocks makes
    both read the same material. Text on lines of its own (``Bag Attributes``) goes too, harmlessly.
    """
    for key, labels in ((TLS_KEY, _KEY_LABELS), (CA_CRL, ("X509 CRL",))):
        raw = data.get(key)
        kept = pem_blocks.keep_blocks(raw, labels)[0] if raw else b""
        if kept and kept != raw:
            data[key] = kept


def serving_certificate(secret: Secret, now: int, cache: ParseCache | None = None) -> Checked:
    """``_serving_certificate`` of the Secret's public blocks, saying what was removed."""
    secret, stripped = public_blocks(secret)
    return replace(_serving_certificate(secret, now, cache), stripped=stripped)


def _serving_certificate(secret: Secret, now: int, cache: ParseCache | None = None) -> Checked:
    """A ``kubernetes.io/tls`` Secret's chain and key, verified to match each other."""
    cert_bytes = secret.data.get(TLS_CERT)
    key_bytes = secret.data.get(TLS_KEY)
    if not cert_bytes or not key_bytes:
        missing = " and ".join(k for k, v in ((TLS_CERT, cert_bytes), (TLS_KEY, key_bytes)) if not v)
        return Checked(error=f"Secret {secret.ref.namespace}/{secret.ref.name} has no {missing}")
    cert_pem, key_pem = cert_bytes, key_bytes
    parsed = (cache.get("serving", (cert_pem, key_pem), lambda: _parse_serving(cert_pem, key_pem)) if cache is not None
              else _parse_serving(cert_pem, key_pem))
    if parsed.certificate is None or parsed.not_after is None:
        return Checked(error=parsed.error)
    return Checked(certificate=parsed.certificate, warnings=tuple(_expiry_warnings(parsed.not_after, now)))


def _parse_serving(cert_bytes: bytes, key_bytes: bytes) -> _ParsedServing:
    for name, data in ((TLS_CERT, cert_bytes), (TLS_KEY, key_bytes)):
        if _NOT_PEM_TEXT.search(data):
            return _ParsedServing(None, f"{name} holds bytes that are not PEM text (control or non-ASCII)", None)
    try:
        chain = x509.load_pem_x509_certificates(cert_bytes)
    except ValueError as exc:
        return _ParsedServing(None, f"{TLS_CERT} is not a PEM certificate chain ({exc})", None)
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as exc:
        return _ParsedServing(None, f"{TLS_KEY} is not an unencrypted PEM private key ({exc})", None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):
        return _ParsedServing(None, f"{TLS_KEY} has an unsupported key type", None)
    leaf = chain[0]
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        return _ParsedServing(None, f"{TLS_KEY} does not match the certificate in {TLS_CERT}", None)
    cert_pem = cert_bytes.decode()
    key_pem = key_bytes.decode()
    names = certificate_names(leaf)
    not_after = leaf.not_valid_after_utc
    certificate = Certificate(content_id(cert_pem, key_pem), cert_pem, key_pem, names, int(not_after.timestamp()))
    return _ParsedServing(certificate, "", not_after)


def ca_bundle(secret: Secret, now: int, cache: ParseCache | None = None) -> Checked:
    """``_ca_bundle`` of the Secret's public blocks, saying what was removed."""
    secret, stripped = public_blocks(secret)
    return replace(_ca_bundle(secret, now, cache), stripped=stripped)


def _ca_bundle(secret: Secret, now: int, cache: ParseCache | None = None) -> Checked:
    """``ca.crt`` (one or more CA certificates) and optional ``ca.crl`` as trust anchors."""
    pem = secret.data.get(CA_CERT)
    if not pem:
        return Checked(error=f"Secret {secret.ref.namespace}/{secret.ref.name} has no {CA_CERT}")
    crl = secret.data.get(CA_CRL, b"")
    parsed = cache.get("ca", (pem, crl), lambda: _parse_bundle(pem, crl)) if cache is not None \
        else _parse_bundle(pem, crl)
    if parsed.bundle is None:
        return Checked(error=parsed.error)
    warnings = [f"CA {subject} expired at {not_after.isoformat()}"
                for subject, not_after in parsed.expiries if now and not_after.timestamp() < now]
    return Checked(bundle=parsed.bundle, warnings=tuple(warnings))


def _parse_bundle(pem: bytes, crl: bytes) -> _ParsedBundle:
    for name, data in ((CA_CERT, pem), (CA_CRL, crl)):
        if _NOT_PEM_TEXT.search(data):
            return _ParsedBundle(None, f"{name} holds bytes that are not PEM text (control or non-ASCII)", ())
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        return _ParsedBundle(None, f"{CA_CERT} is not PEM certificates ({exc})", ())
    if crl:
        try:
            x509.load_pem_x509_crl(crl)
        except ValueError as exc:
            return _ParsedBundle(None, f"{CA_CRL} is not a PEM CRL ({exc})", ())
    text, crl_text = pem.decode(), crl.decode()
    expiries = tuple((ca.subject.rfc4514_string(), ca.not_valid_after_utc) for ca in cas)
    return _ParsedBundle(CABundle(content_id(text, crl_text), text, crl_text), "", expiries)


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(sorted(set(names)))


def covers(names: tuple[str, ...], host: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard for exactly one leftmost label."""
    if host in names:
        return True
    if host.startswith("*."):
        return host in names
    _, _, rest = host.partition(".")
    return bool(rest) and f"*.{rest}" in names


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def utc_now() -> int:
    """For callers at the I/O edge (CLI, controller); the renderer itself takes time as data."""
    return int(dt.datetime.now(dt.UTC).timestamp())
