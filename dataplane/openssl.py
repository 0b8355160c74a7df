"""The few OpenSSL calls Python's ``ssl`` module does not expose, reached through guarded ctypes.

Used by the edge (``dataplane.tls``) and the upstream client (``dataplane.http.upstream``), so it
imports neither. Every call is guarded: the libssl loaded here must be the very build ``_ssl``
uses (same version number), and a pointer read out of a Python object must read back a value that
Python itself reports for that object before it is used. When a guard fails the function says so
(False / None) and the caller falls back to the stricter behaviour (fail closed).

- ``set_verify_depth``: ``SSL_CTX_set_verify_depth`` (client chains at the edge, backend chains).
- ``accept_any_peer_certificate``: ``SSL_CTX_set_verify`` with a callback that accepts every chain,
  for client auth ``optional_no_ca`` and hosts with an error page: the handshake completes with an
  untrusted certificate, and the verdict OpenSSL reached is read afterwards with ``peer_verify_result``
  (``getpeercert()`` returns a parsed certificate whenever the verify mode asks for one, so it
  cannot tell a verified certificate from an accepted one).
"""

from __future__ import annotations

import ctypes
import ssl

X509_V_OK = 0
_SSL_VERIFY_PEER = 0x01
_POINTER = ctypes.sizeof(ctypes.c_void_p)

# int verify_callback(int preverify_ok, X509_STORE_CTX *ctx): 1 accepts the chain whatever OpenSSL found.
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda _preverify_ok, _store: 1)  # module lifetime: OpenSSL keeps the pointer


class AcceptAnyPeerContext(ssl.SSLContext):
    """A server context whose verify callback accepts any client chain (see ``accept_any_peer_certificate``).

    The class marks such contexts, so ``client_cert_from_ssl`` knows that a parsed peer certificate
    proves nothing and asks OpenSSL for its verify result instead.
    """


def _load() -> ctypes.CDLL | None:
    for name in ("libssl.so.3", "libssl.so.1.1", "libssl.so"):
        try:
            lib = ctypes.CDLL(name)
            lib.OpenSSL_version_num.restype = ctypes.c_ulong
            if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
                continue
            lib.SSL_CTX_get_verify_depth.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_verify_depth.restype = ctypes.c_int
            lib.SSL_CTX_set_verify_depth.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.SSL_CTX_set_verify_depth.restype = None
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
            lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
            lib.SSL_CTX_set_verify.restype = None
            lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
            lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
            lib.SSL_get_verify_result.argtypes = [ctypes.c_void_p]
            lib.SSL_get_verify_result.restype = ctypes.c_long
            lib.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
            lib.X509_verify_cert_error_string.restype = ctypes.c_char_p
            return lib
        except (OSError, AttributeError):
            continue
    return None


_LIB: list[ctypes.CDLL | None] = []  # loaded once; the list is only ever appended to


def _libssl() -> ctypes.CDLL | None:
    if not _LIB:
        _LIB.append(_load())
    return _LIB[0]


def _read_pointer(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


def _ctx_pointer(lib: ctypes.CDLL, ctx: ssl.SSLContext) -> int:
    """The ``SSL_CTX*`` behind a context (first field after the object header), or 0 when it does not check out."""
    ptr = _read_pointer(id(ctx) + object.__basicsize__)
    if not ptr or lib.SSL_CTX_get_options(ptr) != int(ctx.options):
        return 0
    return ptr


def set_verify_depth(ctx: ssl.SSLContext, depth: int) -> bool:
    """``SSL_CTX_set_verify_depth``; False when it could not be set (OpenSSL's default, 100, applies)."""
    try:
        lib = _libssl()
        if lib is None:
            return False
        ptr = _ctx_pointer(lib, ctx)
        if not ptr or lib.SSL_CTX_get_verify_depth(ptr) != -1:  # a fresh SSL_CTX says -1
            return False
        lib.SSL_CTX_set_verify_depth(ptr, depth)
        return bool(lib.SSL_CTX_get_verify_depth(ptr) == depth)
    except (OSError, AttributeError, ValueError):
        return False


def accept_any_peer_certificate(ctx: AcceptAnyPeerContext) -> bool:
    """Ask for a peer certificate and accept any chain; the verdict is kept for ``peer_verify_result``.

    Sets ``verify_mode`` to CERT_OPTIONAL first (so the context asks for a certificate even if the
    callback cannot be installed: then untrusted certificates fail the handshake, the strict side).
    Python's own ``verify_mode`` setter keeps an installed callback.
    """
    ctx.verify_mode = ssl.CERT_OPTIONAL
    try:
        lib = _libssl()
        if lib is None:
            return False
        ptr = _ctx_pointer(lib, ctx)
        if not ptr or lib.SSL_CTX_get_verify_mode(ptr) != _SSL_VERIFY_PEER:
            return False
        lib.SSL_CTX_set_verify(ptr, _SSL_VERIFY_PEER, _ACCEPT_ANY)
        return ctx.verify_mode == ssl.CERT_OPTIONAL
    except (OSError, AttributeError, ValueError):
        return False


def peer_verify_result(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[bool, str]:
    """(verified, reason) of the peer chain of a finished handshake, as OpenSSL decided it.

    Reads the ``SSL*`` out of the ``_ssl._SSLSocket`` behind ``ssl_object`` (header, weakref to the
    socket, ``SSL*``, context), but only after the context field reads back the very context object
    Python reports, and only uses it when ``SSL_get_SSL_CTX`` names that context's ``SSL_CTX``.
    Anything unexpected is "not verified". A connection without a peer certificate also reads
    ``X509_V_OK``: callers check that a certificate was presented.
    """
    try:
        lib = _libssl()
        inner = getattr(ssl_object, "_sslobj", None)
        if lib is None or inner is None:
            return False, "verify result unavailable"
        context = inner.context
        base = id(inner) + object.__basicsize__  # PyObject *Socket; SSL *ssl; PySSLContext *ctx
        if _read_pointer(base + 2 * _POINTER) != id(context):
            return False, "verify result unavailable"
        ssl_ptr = _read_pointer(base + _POINTER)
        ctx_ptr = _ctx_pointer(lib, context)
        if not ssl_ptr or not ctx_ptr or lib.SSL_get_SSL_CTX(ssl_ptr) != ctx_ptr:
            return False, "verify result unavailable"
        code = int(lib.SSL_get_verify_result(ssl_ptr))
        if code == X509_V_OK:
            return True, ""
        text = lib.X509_verify_cert_error_string(code)
        return False, text.decode("ascii", "replace") if text else f"X509 error {code}"
    except (OSError, AttributeError, ValueError, TypeError):
        return False, "verify result unavailable"
