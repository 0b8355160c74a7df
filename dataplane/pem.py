"""PEM material into OpenSSL without touching the disk (standard library only).

``ssl.SSLContext.load_cert_chain`` only takes paths. Writing private keys to a temporary file
would leave them on disk (and on a read-only root filesystem there may be nowhere to write), so
the PEM goes into an anonymous memory file (``memfd_create``) and OpenSSL reads it through
``/proc/self/fd/N``. The descriptor is closed right after loading.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Iterator

PEM_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_CRL_BEGIN = "-----BEGIN X509 CRL-----"


@contextlib.contextmanager
def memory_file(text: str) -> Iterator[str]:
    """A path that reads back ``text`` and exists only in memory while the block runs."""
    fd = os.memfd_create("portcullis-pem", os.MFD_CLOEXEC)
    try:
        os.write(fd, text.encode())
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def load_key_pair(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Load a certificate chain and its key; raises ``ssl.SSLError`` when they do not match."""
    with memory_file(cert_pem) as cert_path, memory_file(key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path)


def load_trust(context: ssl.SSLContext, ca_pem: str, crl_pem: str = "") -> None:
    """Trust anchors, and with a CRL turn on leaf revocation checks."""
    if crl_pem.strip():
        with memory_file(ca_pem + "\n" + crl_pem) as path:
            context.load_verify_locations(cafile=path)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    else:
        context.load_verify_locations(cadata=ca_pem)


def check_key_pair(cert_pem: str, key_pem: str) -> list[str]:
    if PEM_CERT_BEGIN not in cert_pem:
        return ["certificate is not PEM"]
    if "PRIVATE KEY-----" not in key_pem:
        return ["private key is not PEM"]
    try:
        load_key_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_pem, key_pem)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            return ["private key does not match the certificate"]
        return [f"certificate or key does not parse ({reason})"]
    return []


def check_ca_bundle(ca_pem: str, crl_pem: str = "") -> list[str]:
    if PEM_CERT_BEGIN not in ca_pem:
        return ["CA bundle holds no PEM certificate"]
    if crl_pem.strip() and PEM_CRL_BEGIN not in crl_pem:
        return ["CRL is not PEM"]
    try:
        load_trust(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca_pem, crl_pem)
    except ssl.SSLError as exc:
        return [f"CA bundle does not parse ({exc.reason or exc})"]
    return []


# A whole PEM block whose body is only base64 (so no other block can hide inside one that is kept).
_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----\r?\n([A-Za-z0-9+/=\s]*?)-----END \1-----", re.ASCII)
_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----", re.ASCII)
CERTIFICATE_LABELS = ("CERTIFICATE",)
CA_LABELS = ("CERTIFICATE", "X509 CRL")


def keep_blocks(data: bytes, labels: tuple[str, ...]) -> tuple[bytes, tuple[str, ...]]:
    """Only the PEM blocks labelled ``labels`` (in their order, newline-terminated), and the labels of
    every other block seen, in order (the caller warns about them; a "fullchain + key" bundle names
    ``PRIVATE KEY`` here). Text between blocks is dropped; a block whose body is not base64, or that
    never ends, is dropped and reported by its BEGIN label."""
    kept: list[bytes] = []
    spans: list[tuple[int, int]] = []
    for match in _BLOCK.finditer(data):
        spans.append(match.span())
        if match.group(1).decode() in labels:
            kept.append(match.group(0) + b"\n")
    dropped = [m.group(1).decode() for m in _BEGIN.finditer(data)
               if not any(start <= m.start() < end for start, end in spans)
               or m.group(1).decode() not in labels]
    return b"".join(kept), tuple(dropped)
