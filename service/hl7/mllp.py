"""The MLLP listener: HL7 v2 messages over TCP, framed `<VT> message <FS><CR>`, each answered with its ACK in a
frame, on the asyncio loop (python-hl7's `start_hl7_server`), through the same `receive_message` as POST /hl7/v2.

MLLP carries no token: the listener acts as one configured client (TRIAL_FHIR_MLLP_CLIENT, a registered client
whose scopes and studies apply), or unrestricted when access control is off; every write's audit event names the
peer's address. It binds 127.0.0.1 unless told otherwise. A frame over TRIAL_FHIR_HL7_MAX_MESSAGE_BYTES is answered
AR and the connection closed (the rest of that frame can't be told from the next); bytes before a frame's <VT> are
dropped; bytes that hold no <VT> at all are answered AR."""

import asyncio
import logging
from collections.abc import Callable

from hl7.mllp import start_hl7_server  # type: ignore[import-untyped]  # python-hl7 has no type hints
from hl7.util import generate_message_control_id  # type: ignore[import-untyped]
from sqlalchemy.engine import Engine

from fhir_mappings import hl7v2
from service.audit.events import new_id
from service.auth.clients import get_client
from service.auth.scopes import parse_scopes
from service.core.context import Caller, Context
from service.core.interactions import Core
from service.hl7.service import receive_message
from service.settings import Settings

log = logging.getLogger("trial_fhir")
START, END = b"\x0b", b"\x1c\x0d"


class ListenerRefused(Exception):
    """The listener can't start as configured (no client with access control on, an unknown or disabled one)."""


def listener_caller(engine: Engine, settings: Settings) -> Caller:
    """Who the listener acts as: TRIAL_FHIR_MLLP_CLIENT's registered client (its scopes and studies), required with
    TRIAL_FHIR_AUTH=smart; with access control off, an unrestricted caller named `mllp`."""
    if settings.mllp_client is None:
        if settings.auth != "off":
            raise ListenerRefused("TRIAL_FHIR_MLLP_CLIENT must name a registered client (trial-fhir clients add) "
                                  "whose scopes the MLLP listener acts with: MLLP carries no token")
        return Caller(name="mllp")
    client = get_client(engine, settings.mllp_client)
    if client is None or client.disabled:
        raise ListenerRefused(f"TRIAL_FHIR_MLLP_CLIENT {settings.mllp_client!r} is not a registered, enabled client")
    return Caller(name=client.client_id, scopes=parse_scopes(client.scope),
                  studies=frozenset(client.studies) or None, deidentified=client.deidentified)


class Listener:
    """One MLLP listener: the server, and a count of what it answered (the CLI's progress)."""

    def __init__(self, core: Core, caller: Caller, base_url: str, max_bytes: int,
                 on_answer: Callable[[str, str], None] | None = None) -> None:
        self.core, self.caller, self.base_url, self.max_bytes = core, caller, base_url, max_bytes
        self.on_answer = on_answer
        self.counts: dict[str, int] = {"AA": 0, "AE": 0, "AR": 0}
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port bound (0 picks a free one)."""
        self.server = await start_hl7_server(self._serve, host, port, limit=self.max_bytes + len(END))
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else None
        try:
            while True:
                try:
                    data = await reader.readuntil(END)
                except asyncio.IncompleteReadError:
                    return  # the peer closed (what it sent after its last frame is no message)
                except asyncio.LimitOverrunError:
                    self._answer(writer, "AR", hl7v2.ack(None, "", "AR", [hl7v2.Problem(
                        "100", f"The MLLP frame exceeds the limit of {self.max_bytes} bytes; the connection is "
                        "closed")], generate_message_control_id()), address)
                    await writer.drain()
                    return
                start = data.find(START)
                if start < 0:
                    self._answer(writer, "AR", hl7v2.ack(None, "", "AR", [hl7v2.Problem(
                        "100", "Data outside an MLLP frame (no <VT> before <FS><CR>)")],
                        generate_message_control_id()), address)
                else:
                    await self._message(writer, data[start + 1:-len(END)], address)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    async def _message(self, writer: asyncio.StreamWriter, raw: bytes, address: str | None) -> None:
        ctx = Context(self.base_url, self.caller, request_id=new_id(), client_address=address)
        try:
            answer = await receive_message(self.core, ctx, raw)
            code, body = answer.code, answer.body
        except Exception:  # a database fault, say: the message is not stored, and the sender should send it again
            log.exception("MLLP message from %s could not be processed", address)
            code = "AR"
            body = hl7v2.ack(None, "", "AR", [hl7v2.Problem("207", "The message could not be processed now; send it "
                                                                   "again later")],
                             generate_message_control_id()).encode()
        writer.write(START + body + END)
        self.counts[code] = self.counts.get(code, 0) + 1
        if self.on_answer is not None:
            self.on_answer(code, address or "")

    def _answer(self, writer: asyncio.StreamWriter, code: str, ack: str, address: str | None) -> None:
        writer.write(START + ack.encode() + END)
        self.counts[code] = self.counts.get(code, 0) + 1
        if self.on_answer is not None:
            self.on_answer(code, address or "")


def listener_base_url(settings: Settings) -> str:
    """The base URL written in the listener's Contexts (the FHIR base the stored resources are named under)."""
    return (settings.base_url or f"http://{settings.host}:{settings.port}/fhir").rstrip("/")


async def start_listener(core: Core, settings: Settings, host: str, port: int,
                         on_answer: Callable[[str, str], None] | None = None) -> tuple[Listener, int]:
    """Start a listener acting as `listener_caller`; (listener, port bound)."""
    from anyio import to_thread

    caller = await to_thread.run_sync(listener_caller, core.engine, settings)
    listener = Listener(core, caller, listener_base_url(settings), settings.hl7_max_message_bytes, on_answer)
    bound = await listener.start(host, port)
    log.info("MLLP listener on %s:%s, acting as %s", host, bound, caller.name)
    return listener, bound
