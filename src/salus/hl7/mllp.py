"""MLLP, the Minimal Lower Layer Protocol (HL7 v2.8 chapter 2, 2.C / the HL7
Transport Specification MLLP Release 2): each message travels as
``0x0B message 0x1C 0x0D`` over TCP, optionally TLS.

:class:`MllpListener` is the receiving side, run in the ``salus serve``
process (a :class:`~salus.services.Listener`): many concurrent connections,
a read timeout per frame and an idle timeout per connection, a maximum
message size, and TLS with client certificates. Every frame is handed to the
HL7 service in a worker thread, and its acknowledgment is written only
after the service returns, that is after the message is committed.

Framing errors close the connection (there is no frame to answer): bytes
outside a frame, a frame that does not end, a connection idle too long. An
oversized frame is read to its end and discarded, and answered AR with an
ERR segment. :func:`send` is the sending side (outbound feeds).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["END", "START", "FrameError", "MllpListener", "frame", "read_frame", "send"]

log = logging.getLogger("salus.hl7.mllp")

START = b"\x0b"
END = b"\x1c\x0d"


class FrameError(Exception):
    """The byte stream is not MLLP (the connection is closed)."""


class Oversized(Exception):
    """A frame longer than the maximum message size (read to its end and dropped)."""

    def __init__(self, head: bytes) -> None:
        super().__init__("oversized")
        self.head = head


def frame(message: bytes) -> bytes:
    return START + message + END


async def read_frame(
    reader: asyncio.StreamReader,
    max_size: int,
    idle_timeout: float | None = None,
    read_timeout: float | None = None,
) -> bytes | None:
    """One MLLP frame's content; None at a clean end of stream between frames.

    ``idle_timeout`` bounds the wait for a frame to start, ``read_timeout``
    the time the rest of the frame may take (:class:`TimeoutError`).
    """
    first = await asyncio.wait_for(reader.read(1), idle_timeout)
    while first in (b"\r", b"\n"):  # tolerate stray line ends between frames
        first = await asyncio.wait_for(reader.read(1), idle_timeout)
    if not first:
        return None
    if first != START:
        raise FrameError("bytes outside an MLLP frame")
    return await asyncio.wait_for(_frame_body(reader, max_size), read_timeout)


async def _frame_body(reader: asyncio.StreamReader, max_size: int) -> bytes:
    try:
        data = await reader.readuntil(END)
    except asyncio.LimitOverrunError:
        head = await reader.read(4096)
        while True:
            try:
                await reader.readuntil(END)
                break
            except asyncio.LimitOverrunError as exc:
                await reader.readexactly(exc.consumed)
        raise Oversized(head) from None
    except asyncio.IncompleteReadError:
        raise FrameError("the connection closed inside a frame") from None
    body = data[: -len(END)]
    if len(body) > max_size:
        raise Oversized(body[:4096])
    if START in body:
        raise FrameError("a start block inside a frame")
    return body


Handler = Callable[[bytes, str | None, bytes | None, bool], Awaitable[bytes | None]]


@dataclass
class ListenerConfig:
    host: str
    port: int
    max_message_bytes: int
    read_timeout: float
    idle_timeout: float
    max_connections: int
    ssl_context: ssl.SSLContext | None = None


class MllpListener:
    """An asyncio MLLP server; ``handler(frame, peer, cert_der, oversized)`` answers a frame."""

    name = "mllp"

    def __init__(
        self,
        config: ListenerConfig,
        handler: Handler,
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.on_start = on_start
        self.on_stop = on_stop
        self.server: asyncio.Server | None = None
        self.port: int | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.max_connections)

    async def start(self) -> None:
        cfg = self.config
        self._slots = asyncio.Semaphore(cfg.max_connections)
        self.server = await asyncio.start_server(
            self._serve,
            cfg.host,
            cfg.port,
            ssl=cfg.ssl_context,
            limit=cfg.max_message_bytes + len(END) + 1,
            reuse_address=True,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        if self.on_start is not None:
            await self.on_start()
        log.info("MLLP listener on %s:%s", cfg.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None
        if self.on_stop is not None:
            await self.on_stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else None
        ssl_object = writer.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if self._slots.locked():
            log.warning("MLLP connection refused: too many connections")
            writer.close()
            return
        async with self._slots:
            try:
                await self._conversation(reader, writer, peer, cert)
            except (FrameError, TimeoutError) as exc:
                log.info("MLLP connection closed: %s", exc or "timeout")
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            except asyncio.CancelledError:
                pass
            finally:
                writer.close()
                if task is not None:
                    self._connections.discard(task)

    async def _conversation(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str | None,
        cert: bytes | None,
    ) -> None:
        cfg = self.config
        while True:
            oversized = False
            try:
                body = await read_frame(
                    reader, cfg.max_message_bytes, cfg.idle_timeout, cfg.read_timeout
                )
            except Oversized as exc:
                body, oversized = exc.head, True
            if body is None:
                return
            reply = await self.handler(body, peer, cert, oversized)
            if reply is None:
                continue
            writer.write(frame(reply))
            await writer.drain()


def send(
    host: str,
    port: int,
    message: bytes,
    *,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    max_size: int = 1 << 20,
) -> bytes:
    """Send one message and return the acknowledgment's bytes (blocking; jobs use it)."""
    with socket.create_connection((host, port), timeout=timeout) as raw_sock:
        raw_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw_sock
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw_sock, server_hostname=server_hostname or host)
        sock.sendall(frame(message))
        data = b""
        while END not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the receiver closed the connection before acknowledging")
            data += chunk
            if len(data) > max_size:
                raise ConnectionError("the acknowledgment is too large")
        start = data.find(START)
        return data[start + 1 : data.index(END)] if start >= 0 else data[: data.index(END)]
