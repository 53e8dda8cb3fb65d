"""HL7 v2 messages arriving at once share write groups (service/core/write_groups.py): each is still all or nothing,
ACKed as it would be alone, a copy of a message is stored once, and a refused message stores nothing — both
databases."""

import asyncio

from sqlalchemy import func, select

from service.core.context import Caller, Context
from service.core.interactions import Core
from service.db import make_engine, read_session
from service.hl7.service import receive_message
from service.store.models import ResourceRecord, table_of
from tests.factories import patient, study, subject
from tests.hl7.messages import msa, obx, oru

R = table_of(ResourceRecord)
CTX = Context("https://fhir.example.org/fhir", Caller("lab", None), request_id="req-hl7-group")


def _count(core: Core, resource_type: str) -> int:
    with read_session(core.engine) as session:
        return int(session.execute(select(func.count()).select_from(R).where(
            R.c.resource_type == resource_type)).scalar_one())


def test_messages_sent_at_once_are_grouped_and_each_acked_as_alone(database_url, settings):
    engine = make_engine(database_url)
    core = Core(engine, settings)
    try:
        admin = Context(CTX.base_url)
        sid = asyncio.run(core.create(admin, "ResearchStudy", study())).id
        for n in range(4):
            pid = asyncio.run(core.create(admin, "Patient", patient(f"MRN-{n}"))).id
            asyncio.run(core.create(admin, "ResearchSubject", subject(sid, pid)))
        messages = []
        for m in range(16):
            results = [obx(k + 1, value=str(100 + m * 10 + k), sub_id=str(k + 1)) for k in range(10)]
            messages.append(oru(f"MRN-{m % 4}", results, control_id=f"MSG-{m:03d}", filler=f"F-{m:03d}"))
        messages[5] = oru("MRN-1", [obx(1), obx(2, value="-3", sub_id="2")], control_id="MSG-BAD", filler="F-BAD")
        messages.append(messages[3])  # a copy of message 3, sent while the first is on its way

        async def send_all():
            return await asyncio.gather(*(receive_message(core, CTX, m.encode()) for m in messages))
        answers = asyncio.run(send_all())
        codes = [a.code for a in answers]
        assert codes[5] == "AE" and codes.count("AA") == 16, codes
        assert msa(answers[16].ack)[1] == "MSG-003"
        assert core.write_groups is not None and core.write_groups.grouped >= 2
        assert _count(core, "Observation") == 15 * 10  # the copy once, nothing of the refused message
        assert _count(core, "Provenance") == 15
    finally:
        asyncio.run(core.stop())
        engine.dispose()
