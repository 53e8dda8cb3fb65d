"""The app of these tests runs with TRIAL_FHIR_AUTH=smart (the other suites run it with auth off): the `settings`
fixture of tests/conftest.py, overridden here, so `app`, `client` and `engine` are the SMART-protected app's."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from service.settings import Settings

T = TypeVar("T")


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(database_url=database_url, export_dir=tmp_path / "export", auth="smart", export_worker=False,
                    _env_file=None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine (an Authenticator or TokenIssuer call) to completion, outside the app."""
    return asyncio.run(coro)
