"""Secrets → snapshot certificate material, checked with ``cryptography`` before it ships.

The renderer refuses a bad key pair here, naming the Secret and the key, rather than letting a
data plane refuse the whole snapshot later: one broken Secret must only cost its own host.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from controller.model import Secret
from dataplane.snapshot import CABundle, Certificate, content_id

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"
CA_CRL = "ca.crl"


@dataclass(frozen=True)
class Checked:
    """A usable piece of material, or the reason it is not (``error``), plus advisory warnings."""

    certificate: Certificate | None = None
    bundle: CABundle | None = None
    error: str = ""
    warnings: tuple[str, ...] = ()


def serving_certificate(secret: Secret, now: int) -> Checked:
    """A ``kubernetes.io/tls`` Secret's chain and key, verified to match each other."""
    cert_bytes = secret.data.get(TLS_CERT)
    key_bytes = secret.data.get(TLS_KEY)
    if not cert_bytes or not key_bytes:
        missing = " and ".join(k for k, v in ((TLS_CERT, cert_bytes), (TLS_KEY, key_bytes)) if not v)
        return Checked(error=f"Secret {secret.ref.namespace}/{secret.ref.name} has no {missing}")
    try:
        chain = x509.load_pem_x509_certificates(cert_bytes)
    except ValueError as exc:
        return Checked(error=f"{TLS_CERT} is not a PEM certificate chain ({exc})")
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as exc:
        return Checked(error=f"{TLS_KEY} is not an unencrypted PEM private key ({exc})")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):
        return Checked(error=f"{TLS_KEY} has an unsupported key type")
    leaf = chain[0]
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        return Checked(error=f"{TLS_KEY} does not match the certificate in {TLS_CERT}")
    not_after = int(leaf.not_valid_after_utc.timestamp())
    warnings: list[str] = []
    if now and not_after < now:
        warnings.append(f"certificate expired at {leaf.not_valid_after_utc.isoformat()}")
    elif now and not_after < now + 14 * 86400:
        warnings.append(f"certificate expires soon, at {leaf.not_valid_after_utc.isoformat()}")
    cert_pem = cert_bytes.decode()
    key_pem = key_bytes.decode()
    names = certificate_names(leaf)
    return Checked(
        certificate=Certificate(content_id(cert_pem, key_pem), cert_pem, key_pem, names, not_after),
        warnings=tuple(warnings),
    )


def ca_bundle(secret: Secret, now: int) -> Checked:
    """``ca.crt`` (one or more CA certificates) and optional ``ca.crl`` as trust anchors."""
    pem = secret.data.get(CA_CERT)
    if not pem:
        return Checked(error=f"Secret {secret.ref.namespace}/{secret.ref.name} has no {CA_CERT}")
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        return Checked(error=f"{CA_CERT} is not PEM certificates ({exc})")
    crl = secret.data.get(CA_CRL, b"")
    if crl:
        try:
            x509.load_pem_x509_crl(crl)
        except ValueError as exc:
            return Checked(error=f"{CA_CRL} is not a PEM CRL ({exc})")
    warnings = [
        f"CA {ca.subject.rfc4514_string()} expired at {ca.not_valid_after_utc.isoformat()}"
        for ca in cas
        if now and ca.not_valid_after_utc.timestamp() < now
    ]
    text, crl_text = pem.decode(), crl.decode()
    return Checked(bundle=CABundle(content_id(text, crl_text), text, crl_text), warnings=tuple(warnings))


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
