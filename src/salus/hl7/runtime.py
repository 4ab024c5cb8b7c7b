"""The HL7 part of one Salus process: the service, the MLLP listener, the
background applier and the outbound sender, built once in :func:`build`.

The applier applies messages that were committed but not applied: in
``SALUS_HL7_APPLY=async`` mode every message, in ``sync`` mode those left
behind by a crash between the commit and the mapping (recovery at start-up
and every minute), so an acknowledged message is always applied, once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from salus.db.types import utcnow
from salus.errors import ConfigurationError, InvalidInput, NotAuthenticated, SalusError
from salus.hl7.ack import Ack, batch_ack, make_ack, wants_accept_ack
from salus.hl7.charsets import encode
from salus.hl7.committer import Frame, GroupCommitter
from salus.hl7.errors import APPLICATION_ERROR, Location
from salus.hl7.mllp import ListenerConfig, MllpListener
from salus.hl7.parse import Message, loose_header, split_batch_bytes
from salus.hl7.profiles import Profile, Profiles, load_profiles
from salus.hl7.service import Hl7Service, Prepared, Received
from salus.hl7.store import MessageStore, Row
from salus.security.principal import Principal

if TYPE_CHECKING:
    from salus.jobs import JobContext
    from salus.services import Services

__all__ = ["SEND_JOB", "Hl7Runtime", "build"]

log = logging.getLogger("salus.hl7")

#: The job kind that sends one outbound HL7 message.
SEND_JOB = "hl7.send"
#: Messages the background applier writes in one transaction (each in a savepoint).
APPLY_BATCH = 25


@dataclass(slots=True)
class Committed:
    """Frames whose messages are committed, before their replies are made."""

    replies: list[bytes | None]
    #: (frame index, its messages, whether it was a batch envelope)
    work: list[tuple[int, list[Prepared], bool]] = field(default_factory=list)
    rows: list[tuple[Row, bool]] = field(default_factory=list)


class Hl7Runtime:
    """Registered as a :class:`~salus.services.Listener` (MLLP and the applier)."""

    name = "hl7"

    def __init__(self, services: Services, profiles: Profiles) -> None:
        settings = services.settings
        self.services = services
        self.profiles = profiles
        self.sealer = services.value_sealer()
        self.store = MessageStore(services.db, self.sealer)
        self.service = Hl7Service(
            services.db,
            self.store,
            services.fhir_store,
            services.fhir_router.searcher,
            services.policy,
            services.directory,
            profiles,
            base_url=settings.base_url(),
            apply_sync=settings.hl7_apply == "sync",
            production=settings.mode == "production",
        )
        self.committer = GroupCommitter(
            self.commit_many, self.finish_many, in_flight=services.settings.hl7_commits_in_flight
        )
        self.service.on_application_ack = self._application_ack
        self._peers: dict[tuple[str | None, bytes | None], tuple[float, Principal | None]] = {}
        self._peer_lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._applier: asyncio.Task[None] | None = None
        self.service.on_pending = self._pending
        self.listener: MllpListener | None = None
        if settings.mllp_enabled:
            self.listener = MllpListener(
                ListenerConfig(
                    host=settings.mllp_host,
                    port=settings.mllp_port,
                    max_message_bytes=settings.mllp_max_message_bytes,
                    read_timeout=settings.mllp_read_timeout,
                    idle_timeout=settings.mllp_idle_timeout,
                    max_connections=settings.mllp_max_connections,
                    ssl_context=self._ssl_context(),
                ),
                self._handle,
            )

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self.services.settings
        if (settings.mllp_tls_certfile is None) != (settings.mllp_tls_keyfile is None):
            raise ConfigurationError(
                "SALUS_MLLP_TLS_CERTFILE and SALUS_MLLP_TLS_KEYFILE must be set together"
            )
        if settings.mllp_tls_certfile is None or settings.mllp_tls_keyfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.mllp_tls_certfile, settings.mllp_tls_keyfile)
        if settings.mllp_tls_cafile is not None:
            context.load_verify_locations(settings.mllp_tls_cafile)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # -- the MLLP edge -----------------------------------------------------------------
    async def _handle(
        self, body: bytes, peer: str | None, cert: bytes | None, oversized: bool
    ) -> bytes | None:
        return await self.committer.submit(Frame(body, peer, cert, oversized))

    def _connection_principal(self, peer: str | None, cert: bytes | None) -> Principal | None:
        key = (peer, cert)
        now = time.monotonic()
        with self._peer_lock:
            cached = self._peers.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        try:
            principal: Principal | None = self.services.edges.mllp(peer, cert)
        except NotAuthenticated:
            principal = None
        with self._peer_lock:
            self._peers[key] = (now + 5.0, principal)
        return principal

    def forget_peers(self) -> None:
        """Drop cached connection identities (after edge identities change)."""
        with self._peer_lock:
            self._peers.clear()
        self.service.forget_principals()

    def answer(
        self, body: bytes, peer: str | None, cert: bytes | None, oversized: bool = False
    ) -> bytes | None:
        """The reply to one MLLP frame (a message or a batch); None when none is due."""
        return self.answer_many([Frame(body, peer, cert, oversized)])[0]

    def answer_many(self, frames: Sequence[Frame]) -> list[bytes | None]:
        """The replies to frames that arrived together: their messages are committed in
        one transaction, then (sync mode) applied in order, then acknowledged."""
        return self.finish_many(self.commit_many(frames))

    def commit_many(self, frames: Sequence[Frame]) -> Committed:
        """Steps 1-4 for frames that arrived together: their messages committed in one
        transaction (the :class:`GroupCommitter`'s first step)."""
        committed = Committed([None] * len(frames))
        replies = committed.replies
        for index, item in enumerate(frames):
            if item.oversized:
                header, raw_header = loose_header(item.body)
                text = "The message exceeds the maximum size."
                ack = Ack("AR", APPLICATION_ERROR, Location("MSH"), text)
                replies[index] = encode(make_ack(header, raw_header, ack), None)
                continue
            connection = self._connection_principal(item.peer, item.cert)
            try:
                batch = split_batch_bytes(item.body)
            except SalusError as exc:
                header, raw_header = loose_header(item.body)
                ack = Ack("AR", "100", Location("BTS", 1, 1), exc.message)
                replies[index] = encode(make_ack(header, raw_header, ack), None)
                continue
            raws = batch.raw_messages if batch.is_envelope else [item.body]
            prepared = [
                self.service.prepare(raw, peer=item.peer, connection=connection) for raw in raws
            ]
            committed.work.append((index, prepared, batch.is_envelope))
        everything = [p for _, prepared, _ in committed.work for p in prepared]
        if everything:
            committed.rows = self.store.record_many([p.item for p in everything])
        return committed

    def finish_many(self, committed: Committed) -> list[bytes | None]:
        """Step 5 (sync mode) and the replies, after :meth:`commit_many`."""
        replies = committed.replies
        rows = iter(committed.rows)
        for index, prepared, envelope in committed.work:
            received = [self.service.settle(p, *next(rows)) for p in prepared]
            if not envelope:
                replies[index] = self._reply(received[0])
                continue
            acks = [
                make_ack(r.header, r.raw_header, r.ack, accept=bool(r.header and r.header.enhanced))
                for r in received
            ]
            replies[index] = encode(batch_ack(acks), None)
        return replies

    def _reply(self, received: Received) -> bytes | None:
        if not wants_accept_ack(received.header, received.ack):
            return None
        accept = bool(received.header and received.header.enhanced)
        text = make_ack(received.header, received.raw_header, received.ack, accept=accept)
        try:
            return encode(text, received.charset)
        except InvalidInput:
            return encode(text, None)

    # -- background applier ------------------------------------------------------------
    def _pending(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def apply_pending(self, *, older_than: float = 0.0, yield_to_ingest: bool = False) -> int:
        """Apply committed messages not applied yet, oldest first; returns how many.

        ``yield_to_ingest``: let the MLLP committer go first (see
        :meth:`GroupCommitter.wait_quiet`), as the background applier does.
        """
        done = 0
        before = utcnow() - timedelta(seconds=older_than) if older_than else None
        while True:
            ids = self.store.pending(100, before)
            if not ids:
                return done
            while ids:
                if yield_to_ingest:
                    self.committer.wait_quiet()
                # One write transaction for a few messages (ADR 10, stop-14 amendment).
                taken = self.service.apply_batch(ids[:APPLY_BATCH])
                done += taken
                ids = ids[taken:]

    async def _applier_loop(self) -> None:
        assert self._wake is not None  # noqa: S101
        sync = self.service.apply_sync
        # Recovery after a stop or a crash.
        await asyncio.to_thread(self.apply_pending, yield_to_ingest=True)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 60.0)
            self._wake.clear()
            try:
                await asyncio.to_thread(
                    self.apply_pending, older_than=30.0 if sync else 0.0, yield_to_ingest=True
                )
            except Exception as exc:  # keep the loop alive; the rows stay pending
                log.error("HL7 applier: %s", type(exc).__name__)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._applier = asyncio.create_task(self._applier_loop())
        if self.listener is not None:
            self.committer.start()
            await self.listener.start()

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
            await asyncio.to_thread(self.committer.stop)
        if self._applier is not None:
            self._applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._applier
            self._applier = None

    # -- outbound ----------------------------------------------------------------------
    def send(self, destination: str, message: bytes, *, org_id: str | None = None) -> int:
        """Queue one message for ``destination`` (a job: retried, then dead-lettered)."""
        if destination not in self.profiles.destinations:
            raise InvalidInput("Unknown HL7 destination.")
        context = f"hl7-out:{uuid.uuid4()}"
        sealed = self.sealer.seal(message, context.encode()) if self.sealer else message
        return self.services.jobs.enqueue(
            SEND_JOB,
            {
                "destination": destination,
                "context": context,
                "message": base64.b64encode(sealed).decode(),
            },
            tenant=org_id,
        )

    def run_send_job(self, job: JobContext) -> None:
        """Job handler: open an MLLP connection, send, and wait for an AA/CA."""
        from salus.errors import Unavailable
        from salus.hl7.mllp import send

        payload = job.payload
        destination = self.profiles.destinations.get(str(payload.get("destination")))
        if destination is None:
            raise InvalidInput("Unknown HL7 destination.")
        sealed = base64.b64decode(str(payload["message"]))
        message = (
            self.sealer.open(sealed, str(payload["context"]).encode()) if self.sealer else sealed
        )
        context = ssl.create_default_context() if destination.tls else None
        try:
            reply = send(
                destination.host,
                destination.port,
                message,
                timeout=destination.ack_timeout,
                ssl_context=context,
            )
        except (OSError, ConnectionError):
            raise Unavailable("The HL7 destination did not acknowledge.") from None
        code = _ack_code(reply)
        if code not in ("AA", "CA"):
            raise Unavailable(f"The HL7 destination answered {code or 'no acknowledgment code'}.")

    def _application_ack(self, profile: Profile, message: Message, ack: Ack) -> None:
        """Enhanced mode (2.9.3): an application ACK when MSH-16 asks, to the hospital's
        ``ack_destination``."""
        header = message.header
        condition = (header.application_ack or "NE").upper()
        due = (
            condition == "AL"
            or (condition == "ER" and not ack.ok)
            or (condition == "SU" and ack.ok)
        )
        if not due or profile.ack_destination is None:
            return
        msh = message.require("MSH")
        raw_header = {n: msh.raw_field(n) for n in (3, 4, 5, 6)}
        text = make_ack(header, raw_header, ack)
        self.send(profile.ack_destination, encode(text, message.charset), org_id=profile.org_id)


def _ack_code(reply: bytes) -> str:
    for segment in reply.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA") and len(segment) > 4:
            return segment[4:].split(segment[3:4])[0].decode("latin_1").strip()
    return ""


def build(services: Services) -> Hl7Runtime:
    return Hl7Runtime(services, load_profiles(services.settings.hl7_profiles_file))


def profiles_from(data: dict[str, Any]) -> Profiles:
    return Profiles.from_dict(data)
