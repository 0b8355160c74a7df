"""The admin listener: the snapshot push API, health, and metrics (contracts.md section 3).

The push channel carries private keys, so it is TLS unless it is bound to loopback (local mode),
and every snapshot request is authenticated with a bearer token compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from dataplane import push_body, state_file
from dataplane.gc_pause import gc_paused, parse_snapshot
from dataplane.metrics import Metrics
from dataplane.snapshot import MAX_GENERATION, Snapshot, SnapshotFormatError

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Target(Protocol):
    """What the admin API drives: ``runtime.DataPlane``. Named here, not imported, so ``runtime`` can
    import this module without an import cycle."""

    @property
    def ready(self) -> bool: ...  # a snapshot is applied (If-None-Match: * answers 412 from then on)
    @property
    def serving(self) -> bool: ...  # every serving process is up, none draining (with ready: /readyz)
    @property
    def generation(self) -> int: ...
    @property
    def checksum(self) -> str | None: ...
    @property
    def snapshot(self) -> Snapshot: ...
    @property
    def metrics(self) -> Metrics: ...
    async def apply_async(self, snapshot: Snapshot) -> list[str]: ...


class Settings(Protocol):
    """The admin listener's part of ``runtime.DataPlaneConfig``."""

    @property
    def bind(self) -> str: ...
    @property
    def admin_bind(self) -> str | None: ...
    @property
    def admin_port(self) -> int: ...
    @property
    def admin_cert_file(self) -> str | None: ...
    @property
    def admin_key_file(self) -> str | None: ...
    @property
    def admin_token(self) -> str | None: ...
    @property
    def admin_max_body(self) -> int: ...
    @property
    def state_file(self) -> str | None: ...


class AdminConfigError(ValueError):
    """The admin listener would be unsafe or cannot start as configured."""


class ApplyUnavailable(RuntimeError):
    """The snapshot cannot be applied right now (a worker process is restarting): answered 503, push again."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_ok(header: str | None, token: str | None) -> bool:
    """Constant-time token check; with no token configured nothing is authorised."""
    if not token or not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class AdminServer:
    def __init__(self, dataplane: Target, config: Settings) -> None:
        self.dataplane = dataplane
        self.config = config
        self.bind = config.admin_bind if config.admin_bind is not None else config.bind
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._saving = asyncio.Lock()

    def check_config(self) -> None:
        cfg = self.config
        if bool(cfg.admin_cert_file) != bool(cfg.admin_key_file):
            raise AdminConfigError("--admin-cert-file and --admin-key-file must be given together")
        if not cfg.admin_cert_file and not is_loopback(self.bind):
            raise AdminConfigError(
                f"the admin listener on {self.bind!r} would carry private keys in plain HTTP; give "
                "--admin-cert-file/--admin-key-file, or bind it to loopback (--admin-bind 127.0.0.1)"
            )

    def ssl_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.admin_cert_file or not cfg.admin_key_file:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cfg.admin_cert_file, cfg.admin_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise AdminConfigError(f"cannot load the admin certificate/key: {exc}") from exc
        return ctx

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.admin_max_body, middlewares=[self._guard])
        app.router.add_put("/snapshot", self.put_snapshot)
        app.router.add_patch("/snapshot", self.patch_snapshot)
        app.router.add_get("/snapshot", self.get_snapshot)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        self.check_config()
        context = self.ssl_context()
        await self.restore()
        # auto_decompress off: push bodies are inflated by push_body.decode_body, bounded (a gzip bomb)
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, auto_decompress=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.bind, self.config.admin_port, ssl_context=context, backlog=128)
        await site.start()
        addresses: list[Any] = list(self.runner.addresses)
        self.port = int(addresses[0][1]) if addresses else 0

    async def restore(self) -> None:
        """Serve the snapshot kept in ``--state-file`` before the first push arrives (validated like a push)."""
        path = self.config.state_file
        if not path or self.dataplane.ready:
            return
        snapshot = await asyncio.to_thread(state_file.load, path)
        if snapshot is None:
            return
        errors = await self.dataplane.apply_async(snapshot)
        if errors:
            log.warning("state file snapshot refused; starting empty", extra={"path": path, "errors": errors[:5]})
        else:
            log.warning("serving the snapshot kept in the state file until a controller pushes",
                        extra={"path": path, "generation": snapshot.generation})

    async def _keep(self, path: str) -> None:
        """Write what is applied *now*, one write at a time: two pushes finishing close together cannot leave
        the older one in the file."""
        async with self._saving:
            await asyncio.to_thread(state_file.save, path, self.dataplane.snapshot)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # --- handlers -----------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """What holds for every push, whatever its encoding: ``If-None-Match: *`` (fill only an empty
        data plane, used by controllers that are not leading) answers 412 once a snapshot is applied,
        and JSON nested past the interpreter's recursion limit is a 422, never a 500 with a traceback.
        Every ``/snapshot`` request is authenticated here first (401)."""
        if request.path == "/snapshot":
            if not self._authorised(request):
                if request.method != "GET":
                    log.warning("snapshot push refused: bad or missing token", extra={"peer": request.remote})
                return web.json_response({"errors": ["unauthorised"]}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
            if request.method in ("PUT", "PATCH") and request.headers.get("If-None-Match", "").strip() == "*" \
                    and self.dataplane.ready:
                return web.json_response({"errors": ["a snapshot is already applied (If-None-Match: *)"],
                                          **self._state()}, status=412)
        try:
            return await handler(request)
        except RecursionError:
            self.dataplane.metrics.snapshot_applies.labels("invalid").inc()
            return web.json_response({"errors": ["JSON nested too deeply"]}, status=422)

    def _authorised(self, request: web.Request) -> bool:
        return bearer_ok(request.headers.get("Authorization"), self.config.admin_token)

    def _state(self) -> dict[str, Any]:
        return {"generation": self.dataplane.generation, "checksum": self.dataplane.checksum}

    async def put_snapshot(self, request: web.Request) -> web.Response:
        return await self._push(request, parse_snapshot)

    async def patch_snapshot(self, request: web.Request) -> web.Response:
        """A delta (``dataplane.push_body``): the snapshot minus certificate material this data plane holds."""
        applied = self.dataplane.snapshot if self.dataplane.ready else None
        checksum = self.dataplane.checksum
        return await self._push(request, lambda body: push_body.apply_delta(applied, checksum, _parse_json(body)))

    async def _push(self, request: web.Request, decode: Callable[[bytes], Snapshot]) -> web.Response:
        """Read, inflate and decode one push off the loop (megabytes at 10k hosts), then apply it."""
        try:
            body = await self._body(request)
            snapshot = await asyncio.to_thread(decode, body)
        except push_body.BodyError as exc:
            return web.json_response({"errors": [str(exc)]}, status=exc.status)
        except push_body.BaseMismatch as exc:
            return web.json_response({"errors": [str(exc)], **self._state()}, status=412)
        except SnapshotFormatError as exc:
            self.dataplane.metrics.snapshot_applies.labels("invalid").inc()
            return web.json_response({"errors": [str(exc)]}, status=422)
        return await self._apply(snapshot)

    async def _body(self, request: web.Request) -> bytes:
        """The request body, inflated if it is compressed, never past the admin body limit."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise push_body.BodyError(413, "snapshot larger than the admin body limit") from exc
        encoding = request.headers.get("Content-Encoding")
        return await asyncio.to_thread(push_body.decode_body, raw, encoding, self.config.admin_max_body)

    async def _apply(self, snapshot: Snapshot) -> web.Response:
        if not 0 <= snapshot.generation <= MAX_GENERATION:  # before the 409: a wild generation is invalid, not old
            self.dataplane.metrics.snapshot_applies.labels("invalid").inc()
            return web.json_response({"errors": [f"generation {snapshot.generation} is outside [0, 2^53]"]},
                                     status=422)
        if self.dataplane.ready and snapshot.generation < self.dataplane.generation:
            self.dataplane.metrics.snapshot_applies.labels("stale").inc()
            return web.json_response(
                {"errors": [f"generation {snapshot.generation} is older than the applied "
                            f"{self.dataplane.generation}"], **self._state()},
                status=409,
            )
        try:
            errors = await self.dataplane.apply_async(snapshot)
        except ApplyUnavailable as exc:
            return web.json_response({"errors": [str(exc)], **self._state()}, status=503,
                                     headers={"Retry-After": "1"})
        if errors:
            return web.json_response({"errors": errors}, status=422)
        if self.config.state_file:
            await self._keep(self.config.state_file)
        return web.json_response(self._state())

    async def get_snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(self._state())

    async def livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.dataplane.ready:
            return web.Response(text="no snapshot applied yet\n", status=503)
        if not self.dataplane.serving:
            return web.Response(text="a worker is restarting, or the data plane is draining\n", status=503)
        return web.Response(text="ready\n")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.dataplane.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def _parse_json(body: bytes) -> object:
    with gc_paused():
        try:
            return json.loads(body)
        except ValueError as exc:
            raise SnapshotFormatError(f"not JSON: {exc}") from exc
