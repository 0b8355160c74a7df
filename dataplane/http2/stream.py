"""One HTTP/2 client stream as an asyncio transport look-alike for one ``HTTPProtocol`` exchange.

The HTTP engine speaks HTTP/1.1 only. ``H2ServerProtocol`` (``server.py``) gives every client stream a
fresh ``HTTPProtocol`` and one ``StreamTransport``: the request head (translated by ``translate.py``) and
body go to ``HTTPProtocol.data_received``; the HTTP/1.1 response the engine writes comes back through
``write`` and is parsed with the engine's own framing code (``parse_response_head``, ``LengthReader``,
``ChunkedReader`` keeping trailers) into the response HEADERS, body bytes and trailing HEADERS, handed to
the connection's nghttp2 session (``_session.c``). The session buffers a stream's body and sends what the
stream's and the connection's windows admit; its unsent bytes are ``get_write_buffer_size``, and
``pause_writing``/``resume_writing`` reach the engine at the same kind of water marks as on a socket, so a
client that never opens its window stalls the backend read, not memory. ``pause_reading`` from the engine
stops the stream's window from being reopened (the client's sending stalls, RFC 9113 5.2) instead of
stopping a socket; the connection window is credited at once, so one paused upload never starves the rest.

Nothing here owns a timer: the engine has its own, the connection one for everything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from dataplane.http.framing import LAST_CHUNK, BodyReader, ChunkedReader, LengthReader, ParseError, UntilCloseReader
from dataplane.http.parser import ResponseHead, parse_response_head
from dataplane.http2.translate import grpc_trailers_only, response_fields

if TYPE_CHECKING:
    from dataplane.http.connection import HTTPProtocol
    from dataplane.http2._session import Session

# Stream output buffered beyond HIGH pauses the engine's writing (its backend read); below LOW resumes it.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
MAX_RESPONSE_HEAD = 65536
_GRPC_MESSAGE_BYTES = 512  # of an error page turned into grpc-message

# RST_STREAM codes used here (RFC 9113 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x2, 0x7, 0x8

# Response states: the head is awaited, the body is being handed over, all of it is with the session.
HEAD, BODY, DONE = range(3)


class StreamOwner(Protocol):
    """What a stream needs of its connection (``server.H2ServerProtocol``), named here so the two modules
    do not import each other."""

    paused: set[StreamTransport]  # streams whose engine paused its writing

    def kick(self) -> None: ...  # write what the session has to send (batched per loop iteration)
    def extra_info(self, name: str, default: Any = None) -> Any: ...
    def stream_closed(self, st: StreamTransport) -> None: ...


class StreamTransport:
    """The transport of one stream's ``HTTPProtocol``; the connection drives ``receive``/``closed_by_session``."""

    __slots__ = (
        "_body", "_grpc_error", "_head", "_lost", "_read_paused", "closed", "deadline", "grpc",
        "head_request", "proto", "req_done", "server", "session", "sid", "state", "unacked", "write_paused",
    )

    def __init__(self, server: StreamOwner, session: Session, sid: int, head_request: bool,
                 grpc: bool, req_done: bool) -> None:
        self.server = server
        self.session = session
        self.sid = sid
        self.proto: HTTPProtocol | None = None
        self.head_request = head_request
        self.grpc = grpc
        self.req_done = req_done  # the client ended its side of the stream
        self.state = HEAD
        self.closed = False  # the stream is over for us (closed by the session, or reset)
        self._lost = False  # the engine was told connection_lost
        self._head = b""
        self._body: BodyReader | None = None
        self._grpc_error: tuple[int, bytearray] | None = None  # (HTTP status, message bytes) to send as gRPC
        self.write_paused = False
        self._read_paused = False
        self.unacked = 0  # request-body bytes received while the engine had reading paused
        self.deadline = 0.0  # grpc-timeout as a loop time (0: none)

    # --- the asyncio transport interface the engine uses --------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.state == DONE:
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
            self.reset(INTERNAL_ERROR)
            return
        done = body.done
        grpc_error = self._grpc_error
        if grpc_error is not None:
            message = grpc_error[1]
            for piece in pieces:
                message += piece[:_GRPC_MESSAGE_BYTES - len(message)]
            if done:
                self._complete()
            return
        payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        session = self.session
        if done:  # END_STREAM rides on the last DATA frame, or trailing HEADERS follow it
            self.state = DONE
            trailers = body.trailers if isinstance(body, ChunkedReader) else None
            if trailers:
                if payload:
                    session.write(self.sid, payload, False)
                session.trailers(self.sid, trailers)
            else:
                session.write(self.sid, payload, True)
        elif payload:
            pending = session.write(self.sid, payload, False)
            if pending > HIGH_WATER and not self.write_paused:
                self.write_paused = True
                self.server.paused.add(self)
                if self.proto is not None and not self._lost:
                    self.proto.pause_writing()
        self.server.kick()

    def writelines(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def close(self) -> None:
        """The engine is done with the exchange: a complete response is sent (then END_STREAM); an
        incomplete one cannot be finished any more and resets the stream."""
        if self.state == BODY and isinstance(self._body, UntilCloseReader):
            self._complete()
        elif self.state != DONE and not self.closed:
            self.reset(INTERNAL_ERROR)
        self._tell_lost()

    def abort(self) -> None:
        if not self.closed and (self.state != DONE or self.session.pending(self.sid)):
            self.reset(CANCEL)
        self._tell_lost()

    def is_closing(self) -> bool:
        return self.closed or self._lost

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:  # pragma: no cover - never called: can_write_eof() is False
        pass

    def get_write_buffer_size(self) -> int:
        return 0 if self.closed else self.session.pending(self.sid)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.server.extra_info(name, default)

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        self._read_paused = False
        if self.unacked and not self.closed:
            n, self.unacked = self.unacked, 0
            self.session.consume(self.sid, n)
            self.server.kick()

    def is_reading(self) -> bool:
        return not self._read_paused

    def set_protocol(self, protocol: Any) -> None:  # pragma: no cover - the engine never swaps protocols
        raise NotImplementedError

    def get_protocol(self) -> HTTPProtocol | None:
        return self.proto

    # --- driven by the connection ---------------------------------------------------------------

    def receive(self, data: bytes, chunked: bool) -> None:
        """Request body bytes from a DATA frame: to the engine (chunk-framed when the request is chunked)."""
        proto = self.proto
        if proto is not None and not self._lost:
            proto.data_received(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if self._read_paused and not self.closed:
            self.unacked += len(data)
        else:
            self.session.consume(self.sid, len(data))

    def end_request(self, chunked: bool) -> None:
        self.req_done = True
        proto = self.proto
        if chunked and proto is not None and not self._lost:
            proto.data_received(LAST_CHUNK)

    def closed_by_session(self, error_code: int) -> None:
        """nghttp2 closed the stream: the normal end once the whole response went out, else a reset (the
        client's, a stream error nghttp2 found, or a GOAWAY) that drops the engine's backend exchange."""
        if self.state == DONE and error_code == NO_ERROR:
            self._drop()
        else:
            self.peer_reset()

    def drained(self) -> None:
        """The session sent enough of this stream's buffer: the engine may read its backend again."""
        self.write_paused = False
        if self.proto is not None and not self._lost:
            self.proto.resume_writing()

    def reset(self, code: int) -> None:
        """RST_STREAM from us (the response cannot be completed); the engine is told the connection is lost."""
        if self.closed:
            return
        self.session.reset(self.sid, code)
        self._drop()
        self._tell_lost()
        self.server.kick()

    def peer_reset(self) -> None:
        """The client reset the stream (or the connection is gone): the engine drops its backend exchange."""
        self._drop()
        self._tell_lost()

    def expire(self) -> None:
        """The gRPC deadline passed: DEADLINE_EXCEEDED if nothing was answered yet, else a cancel."""
        if self.closed:
            return
        if self.state == HEAD:
            self.state = DONE
            self.session.respond(self.sid, grpc_trailers_only(504, "deadline exceeded", 4), True)
            self.server.kick()
        else:
            self.reset(CANCEL)
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
                    self.reset(INTERNAL_ERROR)
                    return b""
                self._head = data
                return b""
            try:
                resp = parse_response_head(data[:end])
            except ParseError:
                self.reset(INTERNAL_ERROR)
                return b""
            data = data[end + 4:]
            if resp.status < 200:
                if resp.status != 101:  # interim (100 Continue): HEADERS without END_STREAM
                    self.session.info(self.sid, [(b":status", b"%d" % resp.status)])
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
            self.session.respond(self.sid, fields, no_body)
            if no_body:
                self.state = DONE
                self.server.kick()
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

    def _complete(self) -> None:
        """The whole response body was read: END_STREAM once the buffered rest is out."""
        self.state = DONE
        grpc_error = self._grpc_error
        if grpc_error is not None:
            status, message = grpc_error
            text = bytes(message).decode("utf-8", "replace").strip()
            self.session.respond(self.sid, grpc_trailers_only(status, text), True)
        else:
            self.session.write(self.sid, b"", True)
        self.server.kick()

    def _drop(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.write_paused:
            self.server.paused.discard(self)
        self.server.stream_closed(self)

    def _tell_lost(self) -> None:
        if not self._lost:
            self._lost = True
            proto = self.proto
            if proto is not None:
                # The engine is done with this stream: dropping it breaks the stream <-> engine reference cycle,
                # so both are freed at once by reference counting instead of piling up for the cyclic GC
                # (about 14 objects per stream, a full young-generation collection every ~15 streams).
                self.proto = None
                proto.connection_lost(None)
