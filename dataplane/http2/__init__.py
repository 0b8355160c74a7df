"""HTTP/2 for the data plane: to clients over TLS (ALPN ``h2``) and to backends (h2c, h2 over TLS, gRPC).

HTTP/1.1 stays the engine's one internal form: every client stream is translated (``translate.py``) into one
ordinary ``HTTPProtocol`` exchange, after ``guard.py`` has pre-scanned the client's frames for the known floods.
"""
