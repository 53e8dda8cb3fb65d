"""A read replica beside the test's database (tests/pg_replica.py): on PostgreSQL only, held alone for the test."""

from collections.abc import Iterator

import pytest

from tests.conftest import ON_POSTGRES, TEST_DATABASE_URL
from tests.pg_replica import Replica, exclusive, required, server_url


@pytest.fixture(scope="session")
def replica_server() -> str:
    if not ON_POSTGRES:
        pytest.skip("a read replica is a PostgreSQL streaming replica: run with TEST_DATABASE_URL=postgresql…")
    url, why = server_url(TEST_DATABASE_URL)
    if url is None:
        if required():
            pytest.fail(f"TRIAL_FHIR_REQUIRE_REPLICA=1 but there is no replica: {why}")
        pytest.skip(why)
    return url


@pytest.fixture
def replica(replica_server, database_url) -> Iterator[Replica]:
    """The replica of `database_url`, caught up, held by this test alone; replay resumed (and the server started
    again) at the end whatever the test did."""
    with exclusive():
        found = Replica(database_url, replica_server)
        try:
            found.wait_until_replayed()
            yield found
        finally:
            if found.local:
                found.start_if_stopped()
            found.resume()
            found.dispose()
