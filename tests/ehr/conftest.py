"""Fixtures of the EHR pull tests: settings with small pages and few retries, no backoff waits."""

import pytest
import stamina


@pytest.fixture(autouse=True)
def no_backoff():
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"ehr_page_size": 2, "ehr_retry_attempts": 2})
