"""The interaction core of these tests, on the test's database, with no HTTP in front of it."""

import asyncio
from collections.abc import Iterator

import pytest

from service.core.context import Caller, Context
from service.core.interactions import Core
from service.db import make_engine
from tests.factories import patient, study, subject


@pytest.fixture
def core(database_url, settings) -> Iterator[Core]:
    engine = make_engine(database_url)
    core = Core(engine, settings)
    yield core
    asyncio.run(core.stop())
    engine.dispose()


@pytest.fixture
def enrolled(core) -> dict[str, str]:
    """A study with one enrolled patient, written through the core by an unrestricted client: their ids."""
    admin = Context("https://fhir.example.org/fhir", Caller("admin", None), request_id="req-admin")
    sid = asyncio.run(core.create(admin, "ResearchStudy", study())).id
    pid = asyncio.run(core.create(admin, "Patient", patient())).id
    asyncio.run(core.create(admin, "ResearchSubject", subject(sid, pid)))
    return {"study": sid, "patient": pid}
