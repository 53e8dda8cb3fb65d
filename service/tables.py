"""Imports every table so that `SQLModel.metadata` (and alembic) sees the whole schema."""

from service.adverse_event.models import AdverseEventRecord
from service.audit.models import AuditEntityRecord, AuditEventRecord
from service.auth.models import ClientRecord, SeenAssertionRecord, SigningKeyRecord
from service.catalogue.models import ObservationDefinitionRecord, PlanDefinitionRecord, PlanMeasureRecord
from service.clinical.models import (
    AdministrationRecord,
    EncounterRecord,
    ProcedureRecord,
    ProvenanceRecord,
    ProvenanceTargetRecord,
)
from service.deid.models import DeidSecretRecord
from service.ehr.models import EhrSourceRecord, EhrSyncIssueRecord, EhrWatermarkRecord
from service.export.models import ExportJobRecord
from service.hl7.models import Hl7MessageRecord
from service.jobs.models import JobRecord
from service.observation.models import MeasurementRecord
from service.search.indexes import INDEXES as SEARCH_INDEXES  # noqa: F401  (migration 0003)
from service.store.models import IdentifierRecord, ResourceRecord, ResourceVersion
from service.terminology.models import ConceptMapElementRecord, ConceptMapRecord
from service.trial.models import ArmRecord, PatientRecord, StudyRecord, SubjectRecord

__all__ = [
    "AdministrationRecord", "AdverseEventRecord", "ArmRecord", "AuditEntityRecord", "AuditEventRecord", "ClientRecord",
    "ConceptMapElementRecord", "ConceptMapRecord", "DeidSecretRecord", "EhrSourceRecord", "EhrSyncIssueRecord",
    "EhrWatermarkRecord", "EncounterRecord", "ExportJobRecord", "Hl7MessageRecord", "IdentifierRecord", "JobRecord",
    "MeasurementRecord", "ObservationDefinitionRecord", "PlanDefinitionRecord", "PlanMeasureRecord",
    "PatientRecord", "ProcedureRecord", "ProvenanceRecord", "ProvenanceTargetRecord", "ResourceRecord",
    "ResourceVersion", "SeenAssertionRecord", "SigningKeyRecord", "StudyRecord", "SubjectRecord",
]
