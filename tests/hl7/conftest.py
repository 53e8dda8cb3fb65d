"""The app of these tests knows the lab's assigning authority (TRIAL_FHIR_HL7_AUTHORITIES)."""

import pytest

from service.settings import Settings
from tests.factories import MRN

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(database_url=database_url, export_dir=tmp_path / "export", auth="off", export_worker=False,
                    hl7_authorities={"SNUH": MRN}, _env_file=None)
