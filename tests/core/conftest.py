"""The interaction core of these tests, on the test's database, with no HTTP in front of it."""

import asyncio
from collections.abc import Iterator

import pytest

from service.core.interactions import Core
from service.db import make_engine


@pytest.fixture
def core(database_url, settings) -> Iterator[Core]:
    engine = make_engine(database_url)
    core = Core(engine, settings)
    yield core
    asyncio.run(core.stop())
    engine.dispose()
