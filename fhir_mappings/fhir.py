"""The only module that imports fhir.resources: the FHIR release (R4B models for R4 JSON) is chosen here.

R4B is wire-compatible with R4 for every resource type this service handles (Patient, ResearchStudy,
ResearchSubject, Observation, AdverseEvent, AuditEvent, Encounter, MedicationAdministration, Procedure, Provenance,
ConceptMap, Bundle, OperationOutcome, CapabilityStatement, CodeSystem, Group, SearchParameter, MeasureReport).
"""

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.adverseevent import AdverseEvent, AdverseEventSuspectEntity, AdverseEventSuspectEntityCausality
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import (
    Bundle,
    BundleEntry,
    BundleEntryRequest,
    BundleEntryResponse,
    BundleEntrySearch,
    BundleLink,
)
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.conceptmap import ConceptMap
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.group import Group
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.measurereport import MeasureReport
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.observationdefinition import ObservationDefinition
from fhir.resources.R4B.operationoutcome import OperationOutcome, OperationOutcomeIssue
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.period import Period
from fhir.resources.R4B.plandefinition import PlanDefinition
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.researchstudy import ResearchStudy, ResearchStudyArm
from fhir.resources.R4B.researchsubject import ResearchSubject
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.searchparameter import SearchParameter
from fhir.resources.R4B.subscription import Subscription

FHIR_VERSION = "4.0.1"


def resource_class(resource_type: object) -> type[Resource] | None:
    """The model of any R4 resource type by name (e.g. a contained resource's), None for a name that is none."""
    if not isinstance(resource_type, str) or not resource_type[:1].isupper():
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return cls if issubclass(cls, Resource) else None

#: spelled out (it was `[name for name in dir() if name[0].isupper()]`) so that type checkers and linters see
#: the re-exports: other modules use these names as `fhir.Patient`, ...
__all__ = [
    "AdverseEvent", "AdverseEventSuspectEntity", "AdverseEventSuspectEntityCausality", "AuditEvent", "Bundle",
    "BundleEntry", "BundleEntryResponse", "BundleEntrySearch", "BundleLink", "CapabilityStatement",
    "CodeSystem", "CodeableConcept", "Coding", "ConceptMap", "Encounter", "Extension", "FHIR_VERSION", "Group",
    "HumanName", "Identifier", "MeasureReport", "MedicationAdministration", "Observation", "ObservationComponent",
    "ObservationDefinition",
    "OperationOutcome", "OperationOutcomeIssue", "Patient", "Period", "PlanDefinition",
    "Procedure", "Provenance", "Quantity",
    "Reference", "ResearchStudy", "ResearchStudyArm", "ResearchSubject", "Resource", "SearchParameter",
    "Subscription", "BundleEntryRequest", "resource_class",
]
