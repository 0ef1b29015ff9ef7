"""``slimkit stream --serve``: a live web view of the stream, for any number of browsers.

An aiohttp server runs in a background thread with its own event loop; the streaming loop hands
it every processed frame (:meth:`LiveServer.publish`, which only stores it). Each viewer gets
the newest frame when it is ready for one, so a slow viewer skips frames instead of queueing
them, and nothing a viewer does can slow down or stop the stream.

- ``GET /``: the page (``static/live.html``): the frames, the smoothed prediction and its
  probability bars, per-frame latency, the sustainable FPS (1 / compute) apart from the
  source's rate, frames per second reaching the page, buffer resets and a latency chart.
- ``GET /ws``: a WebSocket; per frame a JSON text message (:meth:`FrameUpdate.state` plus the
  number of viewers), then the frame as a JPEG (binary).
- ``GET /stream.mjpg``: the frames as MJPEG (``multipart/x-mixed-replace``), for video players.
- ``GET /state.json`` and ``GET /frame.jpg``: the newest state and frame.

Only loopback addresses are served unless the caller allows others (``--allow-remote``): a
camera stream on every network interface is a privacy problem nobody should get by accident.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import socket
import threading
from importlib import resources
from typing import Callable, Optional

import numpy as np

from slimkit.errors import ConfigError, MissingExtraError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
#: frames larger than this many pixels on their long side are scaled down before JPEG encoding
MAX_SIDE = 640
JPEG_QUALITY = 80
BOUNDARY = "slimkitframe"
ADDRESS_FORMS = "HOST:PORT, :PORT, PORT or HOST (e.g. 127.0.0.1:8765; port 0 picks a free one)"


# -- the address -------------------------------------------------------------------------------
def parse_address(text: str) -> tuple[str, int]:
    """``'HOST:PORT'``, ``'[IPv6]:PORT'``, ``':PORT'``, ``'PORT'`` or ``'HOST'`` -> ``(host, port)``;
    the host defaults to 127.0.0.1 and the port to 8765."""
    text = (text or "").strip()
    host, port = DEFAULT_HOST, str(DEFAULT_PORT)
    if text.startswith("["):                      # [::1]:8765
        inside, _, rest = text[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise _bad_address(text)
            port = rest[1:]
    elif text.count(":") == 1:                     # host:port or :port
        h, port = text.split(":")
        host = h or DEFAULT_HOST
    elif text.isdigit():                           # port
        port = text
    elif text.count(":") > 1:                      # a bare IPv6 address
        host = text
    elif text:                                     # host
        host = text
    if not host or not port.isdigit() or int(port) > 65535:
        raise _bad_address(text)
    return host, int(port)


def _bad_address(text: str) -> ConfigError:
    return ConfigError(f"--serve {text!r} is not an address; use {ADDRESS_FORMS}")


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is on this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        raise ConfigError(f"--serve host {host!r} does not resolve to an address of this machine; use an IP "
                          f"address such as 127.0.0.1") from None
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_exposure(host: str, port: int, allow_remote: bool) -> None:
    """Refuse a host other machines can reach unless ``allow_remote`` (``--allow-remote``) says so."""
    if allow_remote or is_loopback(host):
        return
    raise ConfigError(f"--serve {host}:{port} would show the stream to every machine that can reach {host}; add "
                      f"--allow-remote if you mean it, or keep 127.0.0.1 and tunnel (ssh -L {port}:127.0.0.1:{port})")


# -- encoding ----------------------------------------------------------------------------------
def encode_jpeg(frame: np.ndarray, max_side: int = MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """RGB uint8 ``(H, W, 3)`` -> JPEG bytes, scaled down to at most ``max_side`` pixels on its long side."""
    import cv2
    h, w = frame.shape[:2]
    if max(h, w) < 256:
        quality = max(quality, 92)   # a thumbnail shown enlarged: its blocks would show, its bytes are few
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        frame = cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise ConfigError("OpenCV could not encode a frame as JPEG; reinstall opencv-python-headless")
    return buf.tobytes()


def page_html() -> bytes:
    """The page served at ``/`` (``static/live.html``, package data)."""
    return resources.files(__package__).joinpath("static", "live.html").read_bytes()


def _import_aiohttp():
    try:
        from aiohttp import web
    except ImportError:
        raise MissingExtraError("--serve needs the aiohttp web library, which is not installed; "
                                "pip install 'slimkit[serve]' (part of slimkit[video])") from None
    return web


class _OneLineLog(logging.Handler):
    """aiohttp's own log records as one line each (no traceback), through ``echo``."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        self._echo(f"note: live view: {record.getMessage()}{detail}; the stream keeps running")


# -- the server --------------------------------------------------------------------------------
class LiveServer:
    """The web view: ``start()`` binds (raising ``ConfigError`` for a busy port), ``publish(update)``
    hands over a frame (any thread, never blocks), ``close()`` disconnects viewers and stops."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 echo: Callable[[str], None] = print) -> None:
        self.host, self.port = host, port
        self.echo = echo
        self._web = _import_aiohttp()
        self._lock = threading.Lock()
        self._pending = None               # the newest FrameUpdate, not yet taken by the loop thread
        self._version = 0                  # increases with every frame the loop thread takes
        self._state: Optional[dict] = None
        self._frame: Optional[np.ndarray] = None
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._sockets: set = set()          # WebSocket viewers (the page)
        self._streams: set = set()          # MJPEG viewers
        self._closing = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._tick: Optional[asyncio.Event] = None
        self._runner = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="slimkit-live-view")

    # the public side (any thread)
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def viewers(self) -> int:
        """How many pages and MJPEG clients are watching now."""
        return len(self._sockets) + len(self._streams)

    def start(self, timeout: float = 15.0) -> "LiveServer":
        """Bind and serve in the background; ``ConfigError`` when the address cannot be used."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError(f"the live view on {self.host}:{self.port} did not start within {timeout:g} s; "
                              f"try another --serve address")
        if self._error is not None:
            raise self._bind_error(self._error)
        return self

    def publish(self, update) -> None:
        """Hand over the newest :class:`~slimkit_video.online.live.FrameUpdate`; older ones not yet sent are dropped."""
        loop = self._loop
        if loop is None or self._closing:
            return
        with self._lock:
            self._pending = update
        try:
            loop.call_soon_threadsafe(self._take_pending)
        except RuntimeError:  # the loop has closed meanwhile
            pass

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect every viewer and stop serving (idempotent)."""
        loop = self._loop
        if loop is None or self._closing or not self._thread.is_alive():
            self._closing = True
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout)
        except Exception:  # noqa: BLE001 - a slow viewer must not block the exit
            pass
        self._thread.join(timeout)

    def __enter__(self) -> "LiveServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the loop thread
    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._bind())
        except BaseException as e:  # noqa: BLE001 - handed to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _bind(self) -> None:
        web = self._web
        log = logging.getLogger("aiohttp")
        if not any(isinstance(h, _OneLineLog) for h in log.handlers):
            log.addHandler(_OneLineLog(self.echo))
            log.propagate = False
        self._tick = asyncio.Event()
        app = web.Application()
        app.add_routes([web.get("/", self._page), web.get("/ws", self._websocket),
                        web.get("/stream.mjpg", self._mjpeg), web.get("/state.json", self._state_json),
                        web.get("/frame.jpg", self._frame_jpg)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=1.0)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])   # the real port when 0 was asked for

    def _bind_error(self, e: BaseException) -> ConfigError:
        where = f"{self.host}:{self.port}"
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            return ConfigError(f"port {self.port} on {self.host} is already in use; pick another with "
                               f"--serve {self.host}:PORT (or --serve {self.host}:0 for any free port)")
        if isinstance(e, OSError) and e.errno == errno.EADDRNOTAVAIL:
            return ConfigError(f"--serve {where}: {self.host} is not an address of this machine; use 127.0.0.1 "
                               f"or one of this machine's addresses")
        if isinstance(e, OSError) and e.errno == errno.EACCES:
            return ConfigError(f"--serve {where}: port {self.port} needs administrator rights; use a port above 1023")
        return ConfigError(f"the live view cannot serve on {where} ({type(e).__name__}: {e}); "
                           f"try another --serve address")

    def _take_pending(self) -> None:
        with self._lock:
            update, self._pending = self._pending, None
        if update is None or self._closing:
            return
        self._version += 1
        state = update.state()
        state["viewers"] = self.viewers
        state["version"] = self._version
        self._state, self._frame = state, update.frame
        self._wake()

    def _wake(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def _newer_than(self, version: int) -> bool:
        """Wait for a frame newer than ``version``; ``False`` when the server is closing."""
        while self._version <= version and not self._closing:
            await self._tick.wait()
        return not self._closing

    def _current_jpeg(self) -> bytes:
        """The newest frame as JPEG, encoded once per frame however many viewers want it."""
        if self._jpeg[0] != self._version and self._frame is not None:
            self._jpeg = (self._version, encode_jpeg(self._frame))
        return self._jpeg[1]

    async def _shutdown(self) -> None:
        self._closing = True
        self._wake()
        await asyncio.gather(*(ws.close(code=1001, message=b"the stream stopped") for ws in list(self._sockets)),
                             return_exceptions=True)   # a viewer already gone is no error
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    def _viewer_left(self, who: str, why: str = "") -> None:
        if not self._closing:
            self.echo(f"note: viewer {who} disconnected{why}; the stream keeps running "
                      f"({self.viewers} watching)")

    # the routes
    async def _page(self, request):
        return self._web.Response(body=page_html(), content_type="text/html", charset="utf-8",
                                  headers={"Cache-Control": "no-cache"})

    async def _state_json(self, request):
        return self._web.json_response(self._state or {}, headers={"Cache-Control": "no-cache"})

    async def _frame_jpg(self, request):
        if self._frame is None:
            return self._web.Response(status=503, text="no frame yet; the stream is starting")
        return self._web.Response(body=self._current_jpeg(), content_type="image/jpeg",
                                  headers={"Cache-Control": "no-cache"})

    async def _websocket(self, request):
        web = self._web
        # heartbeat: a viewer that vanished without closing is noticed within 20 s; timeout: closing waits 2 s at most
        ws = web.WebSocketResponse(heartbeat=10.0, timeout=2.0, compress=False)
        await ws.prepare(request)
        who = request.remote or "?"
        self._sockets.add(ws)
        sender = asyncio.create_task(self._send_frames(ws))
        try:
            async for _ in ws:   # viewers send nothing; this ends when the viewer leaves
                pass
        finally:
            sender.cancel()
            self._sockets.discard(ws)
            self._viewer_left(who)
        return ws

    async def _send_frames(self, ws) -> None:
        version = 0
        try:
            while await self._newer_than(version):
                version = self._version
                state = dict(self._state, viewers=self.viewers)
                await ws.send_str(json.dumps(state))
                await ws.send_bytes(self._current_jpeg())
        except (ConnectionError, RuntimeError):   # the viewer went away mid-frame
            await ws.close()

    async def _mjpeg(self, request):
        web = self._web
        resp = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        who = request.remote or "?"
        self._streams.add(resp)
        version = 0
        try:
            while await self._newer_than(version):
                version = self._version
                jpeg = self._current_jpeg()
                await resp.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                 .encode() + jpeg + b"\r\n")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._streams.discard(resp)
            self._viewer_left(who, " from the MJPEG stream")
        return resp


def open_live_view(address: Optional[str], allow_remote: bool = False,
                   echo: Callable[[str], None] = print) -> Optional[LiveServer]:
    """Start the web view at ``address`` (``--serve``; ``None``: no view) and say where to open it.

    Raises ``ConfigError`` for a malformed address, a non-loopback host without ``allow_remote``
    and a port in use, before any frame is read.
    """
    if address is None:
        return None
    host, port = parse_address(address)
    check_exposure(host, port, allow_remote)
    server = LiveServer(host, port, echo).start()
    echo(f"live view on {server.url} (open it in a browser{_other_machines_hint(server)}; Ctrl-C stops the stream)")
    return server


def _other_machines_hint(server: LiveServer) -> str:
    """For a server on every interface (0.0.0.0, ::): the address other machines would open."""
    try:
        every = ipaddress.ip_address(server.host).is_unspecified
    except ValueError:
        every = False
    return f", from other machines http://{socket.gethostname()}:{server.port}/" if every else ""
