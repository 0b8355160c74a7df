"""One HTTP/2 client stream as an asyncio transport look-alike for one ``HTTPProtocol`` exchange.

The HTTP engine speaks HTTP/1.1 only. ``H2ServerProtocol`` (``server.py``) gives every client stream a
fresh ``HTTPProtocol`` and one ``StreamTransport``: the request head (translated by ``translate.py``) and
body go to ``HTTPProtocol.data_received``; the HTTP/1.1 response the engine writes comes back through
``write`` and is parsed with the engine's own framing code (``parse_response_head``, ``LengthReader``,
``ChunkedReader`` keeping trailers) into HEADERS, DATA and trailing HEADERS on the stream, within the
stream's and the connection's flow-control windows. Bytes a window does not admit yet wait here: that is
``get_write_buffer_size``, and ``pause_writing``/``resume_writing`` reach the engine at the same kind of
water marks as on a socket, so a client that never opens its window stalls the backend read, not memory.
``pause_reading`` from the engine stops the stream's window from being reopened (the client's sending
stalls, RFC 9113 5.2), instead of stopping a socket.

Nothing here owns a timer: the engine has its own, the connection one for everything else.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from dataplane.http.framing import LAST_CHUNK, BodyReader, ChunkedReader, LengthReader, ParseError, UntilCloseReader
from dataplane.http.parser import ResponseHead, parse_response_head
from dataplane.http2.translate import grpc_trailers_only, response_fields

if TYPE_CHECKING:
    from h2.connection import H2Connection

    from dataplane.http.connection import HTTPProtocol
    from dataplane.http2.server import H2ServerProtocol

# Stream output buffered beyond HIGH pauses the engine's writing (its backend read); below LOW resumes it.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
MAX_RESPONSE_HEAD = 65536
_GRPC_MESSAGE_BYTES = 512  # of an error page turned into grpc-message

# Response states.
HEAD, BODY, DONE, SENT = range(4)


class StreamTransport:
    """The transport of one stream's ``HTTPProtocol``; the connection drives ``receive``/``flush``/``reset``."""

    __slots__ = (
        "_body", "_grpc_error", "_head", "_lost", "_read_paused", "_trailers", "_write_paused", "closed",
        "deadline", "grpc", "h2", "head_request", "out", "out_size", "proto", "req_done", "server", "sid",
        "state", "unacked",
    )

    def __init__(self, server: H2ServerProtocol, h2: H2Connection, sid: int, head_request: bool,
                 grpc: bool, req_done: bool) -> None:
        self.server = server
        self.h2 = h2
        self.sid = sid
        self.proto: HTTPProtocol | None = None
        self.head_request = head_request
        self.grpc = grpc
        self.req_done = req_done  # the client ended its side of the stream
        self.state = HEAD
        self.closed = False  # the stream is over for us (ended and flushed, or reset)
        self._lost = False  # the engine was told connection_lost
        self._head = b""
        self._body: BodyReader | None = None
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._grpc_error: tuple[int, bytearray] | None = None  # (HTTP status, message bytes) to send as gRPC
        self.out: deque[bytes] = deque()
        self.out_size = 0
        self._write_paused = False
        self._read_paused = False
        self.unacked = 0  # flow-controlled bytes received while the engine had reading paused
        self.deadline = 0.0  # grpc-timeout as a loop time (0: none)

    # --- the asyncio transport interface the engine uses --------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.state >= DONE:
            return
        if self.state == HEAD:
            data = self._read_head(data)
            if not data or self.state != BODY:
                return
        body = self._body
        assert body is not None
        try:
            pieces, _ = body.feed(data)
        except ParseError:
            self.reset(ErrorCodes.INTERNAL_ERROR)
            return
        grpc_error = self._grpc_error
        if body.done:  # known before the last piece goes: END_STREAM rides on its DATA frame
            self.state = DONE
            if isinstance(body, ChunkedReader) and body.trailers:
                self._trailers = body.trailers
        out = self.out
        for piece in pieces:
            if grpc_error is not None:
                message = grpc_error[1]
                message += piece[:_GRPC_MESSAGE_BYTES - len(message)]
            elif piece:
                out.append(piece)
                self.out_size += len(piece)
        if self.state == DONE:
            self._complete()
        elif out:
            self._push()

    def writelines(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def close(self) -> None:
        """The engine is done with the exchange: a complete response is flushed (then END_STREAM); an
        incomplete one cannot be finished any more and resets the stream."""
        if self.state == BODY and isinstance(self._body, UntilCloseReader):
            self._complete()
        elif self.state < DONE and not self.closed:
            self.reset(ErrorCodes.INTERNAL_ERROR)
        self._tell_lost()

    def abort(self) -> None:
        if not self.closed and self.state != SENT:
            self.reset(ErrorCodes.CANCEL)
        self._tell_lost()

    def is_closing(self) -> bool:
        return self.closed or self._lost

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:  # pragma: no cover - never called: can_write_eof() is False
        pass

    def get_write_buffer_size(self) -> int:
        return self.out_size

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.server.extra_info(name, default)

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        self._read_paused = False
        if self.unacked and not self.closed:
            n, self.unacked = self.unacked, 0
            self.server.acknowledge(self.sid, n)

    def is_reading(self) -> bool:
        return not self._read_paused

    def set_protocol(self, protocol: Any) -> None:  # pragma: no cover - the engine never swaps protocols
        raise NotImplementedError

    def get_protocol(self) -> HTTPProtocol | None:
        return self.proto

    # --- driven by the connection ---------------------------------------------------------------

    def receive(self, data: bytes, flow_length: int, chunked: bool) -> None:
        """Request body bytes from a DATA frame: to the engine (chunk-framed when the request is chunked)."""
        proto = self.proto
        if data and proto is not None and not self._lost:
            proto.data_received(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if flow_length:
            if self._read_paused and not self.closed:
                self.unacked += flow_length
            else:
                self.server.acknowledge(self.sid, flow_length)

    def end_request(self, chunked: bool) -> None:
        self.req_done = True
        proto = self.proto
        if chunked and proto is not None and not self._lost:
            proto.data_received(LAST_CHUNK)

    def flush(self) -> None:
        """Send what the windows admit of the buffered output, then the end of the stream once all is out."""
        if self.closed:
            return
        out = self.out
        h2 = self.h2
        sid = self.sid
        try:
            while out:
                window = h2.local_flow_control_window(sid)
                if window <= 0:
                    break
                piece = out[0]
                size = len(piece)
                n = min(window, h2.max_outbound_frame_size, size)
                if n == size:
                    out.popleft()
                    self.out_size -= n
                    last = not out and self.state == DONE and self._trailers is None
                    h2.send_data(sid, piece, end_stream=last)
                    if last:
                        self._sent()
                        return
                else:
                    out[0] = piece[n:]
                    self.out_size -= n
                    h2.send_data(sid, piece[:n])
            if not out and self.state == DONE:
                if self._trailers is not None:
                    h2.send_headers(sid, self._trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                self._sent()
                return
        except ProtocolError:  # the stream closed under us (a reset in the same read): nothing more to send
            self._drop()
            return
        if self._write_paused and self.out_size <= LOW_WATER:
            self._write_paused = False
            if self.proto is not None and not self._lost:
                self.proto.resume_writing()

    def reset(self, code: ErrorCodes) -> None:
        """RST_STREAM from us (the response cannot be completed); the engine is told the connection is lost."""
        if self.closed:
            return
        with contextlib.suppress(ProtocolError):
            self.h2.reset_stream(self.sid, code)
        self._drop()
        self._tell_lost()

    def peer_reset(self) -> None:
        """The client reset the stream (or the connection is gone): the engine drops its backend exchange."""
        self._drop()
        self._tell_lost()

    def expire(self) -> None:
        """The gRPC deadline passed: DEADLINE_EXCEEDED if nothing was answered yet, else a cancel."""
        if self.closed:
            return
        if self.state == HEAD and not self.out:
            self.state = DONE
            with contextlib.suppress(ProtocolError):
                self.h2.send_headers(self.sid, grpc_trailers_only(504, "deadline exceeded", 4), end_stream=True)
            self._sent()
        else:
            self.reset(ErrorCodes.CANCEL)
        self._tell_lost()

    # --- internals ------------------------------------------------------------------------------

    def _read_head(self, data: bytes) -> bytes:
        """Take the response head(s) out of ``data``; returns the bytes after the final head (the body)."""
        if self._head:
            data = self._head + data
            self._head = b""
        while self.state == HEAD:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_RESPONSE_HEAD:
                    self.reset(ErrorCodes.INTERNAL_ERROR)
                    return b""
                self._head = data
                return b""
            try:
                resp = parse_response_head(data[:end])
            except ParseError:
                self.reset(ErrorCodes.INTERNAL_ERROR)
                return b""
            data = data[end + 4:]
            if resp.status < 200:
                if resp.status != 101:  # interim (100 Continue): HEADERS without END_STREAM
                    self.h2.send_headers(self.sid, [(b":status", b"%d" % resp.status)])
                    self.server.kick()
                continue
            self._start(resp)
        return data

    def _start(self, resp: ResponseHead) -> None:
        status = resp.status
        if self.grpc and status != 200 and not any(name == b"grpc-status" for name, _ in resp.headers):
            self._grpc_error = (status, bytearray())
        else:
            fields = response_fields(resp)
            no_body = self.head_request or status in (204, 304) or resp.content_length == 0
            self.h2.send_headers(self.sid, fields, end_stream=no_body)
            if no_body:
                self.state = DONE
                self._sent()
                return
        if self.head_request or status in (204, 304):
            self._body = LengthReader(0)
        elif resp.chunked:
            self._body = ChunkedReader(502, keep_trailers=True)
        elif resp.content_length >= 0:
            self._body = LengthReader(resp.content_length)
        else:
            self._body = UntilCloseReader()
        self.state = BODY
        if self._body.done:
            self._complete()
        else:
            self.server.kick()

    def _push(self) -> None:
        """Send what the windows admit now; beyond the high-water mark the engine stops reading its backend."""
        if not self.server.write_paused:
            self.flush()
            self.server.kick()
        if not self._write_paused and self.out_size > HIGH_WATER and not self.closed:
            self._write_paused = True
            if self.proto is not None and not self._lost:
                self.proto.pause_writing()

    def _complete(self) -> None:
        """The whole response body was read: end the stream once the buffered rest is out."""
        self.state = DONE
        grpc_error = self._grpc_error
        if grpc_error is not None:
            status, message = grpc_error
            text = bytes(message).decode("utf-8", "replace").strip()
            with contextlib.suppress(ProtocolError):
                self.h2.send_headers(self.sid, grpc_trailers_only(status, text), end_stream=True)
            self._sent()
            return
        self._push()

    def _sent(self) -> None:
        """END_STREAM is out; a request the client is still sending is refused the rest (RST_STREAM NO_ERROR)."""
        self.state = SENT
        if not self.req_done:
            with contextlib.suppress(ProtocolError):
                self.h2.reset_stream(self.sid, ErrorCodes.NO_ERROR)
        self._drop()
        self.server.kick()

    def _drop(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.out.clear()
        self.out_size = 0
        self.server.stream_closed(self)

    def _tell_lost(self) -> None:
        if not self._lost:
            self._lost = True
            proto = self.proto
            if proto is not None:
                proto.connection_lost(None)
