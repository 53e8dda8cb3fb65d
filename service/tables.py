"""Imports every table so that `SQLModel.metadata` (and alembic) sees the whole schema."""

from service.adverse_event.models import AdverseEventRecord
from service.observation.models import MeasurementRecord
from service.resource.models import IdentifierRecord, ResourceRecord, ResourceVersion
from service.trial.models import ArmRecord, PatientRecord, StudyRecord, SubjectRecord

__all__ = [
    "AdverseEventRecord", "ArmRecord", "IdentifierRecord", "MeasurementRecord", "PatientRecord",
    "ResourceRecord", "ResourceVersion", "StudyRecord", "SubjectRecord",
]
