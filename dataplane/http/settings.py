"""The HTTP engine's settings: limits and timeouts, fixed for the life of the process.

Its own module because the routing table (``table.py``) and the upstream side (``upstream.py``)
both read it, and the table also imports the upstream side: kept in ``table.py`` it made an import
cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataplane.http2.guard import H2Limits


@dataclass(frozen=True)
class HTTPSettings:
    https_redirect_port: int = 443  # port in the Location of insecure-policy redirects (443 -> omitted)
    max_header_bytes: int = 32768  # 431 beyond
    max_request_line: int = 8192  # 414 beyond
    max_headers: int = 100  # request header lines; 431 beyond
    keepalive_timeout: float = 75.0  # idle client connection between requests
    header_timeout: float = 30.0  # from the first byte of a request head to its end
    max_body_buffer: int = 256 * 1024  # client bytes buffered while the upstream is not writable
    upstream_idle_timeout: float = 30.0  # idle keep-alive connection to a backend
    max_idle_per_endpoint: int = 64  # idle backend connections kept (more while more were recently in flight)
    max_connect_attempts: int = 3  # endpoints tried for one request when connects fail
    client_send_timeout: float = 60.0  # the client accepted none of the bytes waiting for it this long: close
    client_body_timeout: float = 60.0  # no request-body byte this long: 408 (or close once a response started)
    upgrade_idle_timeout: float = 3600.0  # upgraded (WebSocket) connection silent both ways this long: close
    max_body_size: int = 1024 * 1024  # request body limit of routes that set none (-1); 0: no limit
    max_response_head: int = 65536  # upstream response head bytes; 502 beyond
    h2: H2Limits = field(default_factory=H2Limits)  # HTTP/2 client streams and flood limits (http2/guard.py)
