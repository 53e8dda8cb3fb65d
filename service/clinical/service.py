"""Encounters, cell administrations (MedicationAdministration, Procedure) and Provenance: their checks and typed
rows, and the four as stored types (ENCOUNTER, MEDICATION_ADMINISTRATION, PROCEDURE, PROVENANCE).

Encounters and administrations belong to an enrolled subject, like Observations: their study is the
`workflow-researchStudy` extension, else the patient's only enrolment; a resource about a patient enrolled in no
study is out of scope (service/errors.py OutOfScope: refused, or skipped under the `skip` policy). A Provenance
belongs to the study of the resources it names (`target`); one that names none of the trial's is out of scope."""

from datetime import date
from typing import Any, cast

from fhir_mappings import fhir
from fhir_mappings.administration import (
    administration_row,
    check_administration,
    check_procedure,
    procedure_row,
)
from fhir_mappings.encounter import check_encounter, encounter_row
from fhir_mappings.observation import study_extension_reference
from fhir_mappings.provenance import provenance_row, provenance_targets
from fhir_mappings.references import parse_reference
from service import examples
from service.clinical import repository
from service.clinical.models import (
    AdministrationRecord,
    EncounterRecord,
    ProcedureRecord,
    ProvenanceRecord,
    ProvenanceTargetRecord,
)
from service.core.stored_type import StoredType, param
from service.errors import OutOfScope, RuleViolation, raise_for_issues
from service.store.models import table_of
from service.store.unit_of_work import UnitOfWork
from service.trial.models import Enrolment
from service.trial.service import enrolment_in, enrolments, prefetch_subjects

EN = table_of(EncounterRecord)
MA = table_of(AdministrationRecord)
PR = table_of(ProcedureRecord)
PV = table_of(ProvenanceRecord)
PT = table_of(ProvenanceTargetRecord)


def _enrolment(uow: UnitOfWork, payload: dict[str, Any], what: str) -> Enrolment:
    """The enrolment a subject's resource belongs to: its study extension's, else the patient's only one."""
    patient_id = uow.resolve(payload.get("subject"), "Patient", f"{what}.subject")
    study_ref = study_extension_reference(payload)
    study_id = None
    if study_ref is not None:
        study_id = uow.resolve(study_ref, "ResearchStudy", f"{what}.extension.valueReference")
    return enrolment_in(uow, patient_id, study_id, what, f"{what}.subject")


def index_encounter(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    enrolment = _enrolment(uow, payload, "Encounter")
    raise_for_issues(check_encounter(payload))
    uow.add(EN, encounter_row(payload, id, enrolment))


def index_administration(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    enrolment = _enrolment(uow, payload, "MedicationAdministration")
    raise_for_issues(check_administration(payload))
    uow.add(MA, administration_row(payload, id, enrolment))


def index_procedure(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    enrolment = _enrolment(uow, payload, "Procedure")
    raise_for_issues(check_procedure(payload))
    uow.add(PR, procedure_row(payload, id, enrolment))


def encounter_start(uow: UnitOfWork, ref: Any) -> date | None:
    """The local start date of the Encounter that `ref` names literally (`Encounter/id`, as a Bundle's urn:uuid
    becomes), if it is stored and has one: what places an Observation without a date of its own in a visit."""
    parsed = parse_reference(ref, "Encounter")
    if parsed.kind != "literal" or parsed.base or parsed.resource_type != "Encounter":
        return None
    if uow.pending(EN):
        uow.flush()
    return repository.get_encounter_start(uow.session, cast(str, parsed.id))


def _studies_and_patients(uow: UnitOfWork, targets: list[tuple[str, str]]) -> list[tuple[set[str], str | None]]:
    """The studies and the patient of each resource a Provenance names: one look-up per type named (a lab message's
    Provenance names its ten results: one statement, not ten)."""
    from service.core.registry import TYPES  # the declarations import this module: only when needed

    by_type: dict[str, list[str]] = {}
    for rtype, id in targets:
        stored = TYPES[rtype]
        if rtype not in ("Patient", "ResearchStudy") and stored.study_param is not None:
            by_type.setdefault(rtype, []).append(id)
    rows: dict[tuple[str, str], tuple[str | None, str | None]] = {}
    for rtype, ids in by_type.items():
        stored = TYPES[rtype]
        assert stored.study_param is not None  # (only such types were gathered)
        if uow.pending(stored.table):
            uow.flush()
        patient = stored.params[stored.patient_param].column if stored.patient_param else None
        found = repository.get_studies_and_patients(uow.session, stored.table,
                                                    stored.params[stored.study_param].column, patient, ids)
        rows.update(((rtype, id), row) for id, row in found.items())
    out: list[tuple[set[str], str | None]] = []
    for rtype, id in targets:
        if rtype == "Patient":
            out.append(({e.study_id for e in enrolments(uow, id)}, id))
        elif rtype == "ResearchStudy":
            out.append(({id}, None))
        else:
            row = rows.get((rtype, id))
            out.append((set(), None) if row is None or row[0] is None else ({row[0]}, row[1]))
    return out


def index_provenance(uow: UnitOfWork, payload: dict, id: str, replacing: bool) -> None:
    from service.core.registry import TYPES  # the declarations import this module: only when needed

    studies: set[str] = set()
    patients: set[str] = set()
    targets: dict[tuple[str, str], None] = {}
    for i, rtype, ref in provenance_targets(payload, TYPES):
        targets[(rtype, uow.resolve(ref, rtype, f"Provenance.target[{i}]"))] = None
    for found, patient in _studies_and_patients(uow, list(targets)):
        studies |= found
        if patient is not None:
            patients.add(patient)
    if not studies:
        raise OutOfScope("Provenance.target names none of the trial's resources (of a study)",
                         expression="Provenance.target")
    if len(studies) > 1:
        raise RuleViolation(f"Provenance.target names resources of several studies ({', '.join(sorted(studies))}): "
                            "one Provenance per study", expression="Provenance.target")
    patient = patients.pop() if len(patients) == 1 else None
    uow.add(PV, provenance_row(payload, id, studies.pop(), patient))
    for rtype, target_id in targets:
        uow.add(PT, {"id": id, "target_type": rtype, "target_id": target_id, "patient_id": patient})


def _study(resource_type: str, column: Any) -> Any:
    return param("study", "reference", column, f"{resource_type}.extension('http://hl7.org/fhir/StructureDefinition/"
                 "workflow-researchStudy').value",
                 "The research study (workflow-researchStudy extension, else the subject's enrolment)",
                 targets=("ResearchStudy",), custom=True)


def _subject(resource_type: str, column: Any) -> tuple[Any, Any]:
    return (param("subject", "reference", column, f"{resource_type}.subject", "The patient", targets=("Patient",)),
            param("patient", "reference", column, f"{resource_type}.subject.where(resolve() is Patient)",
                  "The patient", targets=("Patient",)))


ENCOUNTER = StoredType(
    "Encounter", fhir.Encounter, EN, index_encounter, examples.ENCOUNTER, rank=2, prefetch=prefetch_subjects,
    search=(
        *_subject("Encounter", EN.c.patient_id),
        param("status", "code", EN.c.status, "Encounter.status", "Encounter status",
              systems=("http://hl7.org/fhir/encounter-status",)),
        param("class", "code", EN.c.class_code, "Encounter.class", "Classification (AMB, IMP, …)",
              systems=("http://terminology.hl7.org/CodeSystem/v3-ActCode",)),
        param("date", "datetime", EN.c.period_start, "Encounter.period", "When the encounter began (UTC)"),
        _study("Encounter", EN.c.study_id),
    ),
    sorts={"date": EN.c.period_start}, default_sort="date", study_param="study", patient_param="subject")

MEDICATION_ADMINISTRATION = StoredType(
    "MedicationAdministration", fhir.MedicationAdministration, MA, index_administration,
    examples.MEDICATION_ADMINISTRATION, rank=2, prefetch=prefetch_subjects,
    search=(
        *_subject("MedicationAdministration", MA.c.patient_id),
        param("status", "code", MA.c.status, "MedicationAdministration.status", "Administration status",
              systems=("http://terminology.hl7.org/CodeSystem/medication-admin-status",)),
        param("code", "coding", (MA.c.code_system, MA.c.code),
              "MedicationAdministration.medication.as(CodeableConcept)", "The medication's code"),
        param("effective-time", "datetime", MA.c.effective, "MedicationAdministration.effective",
              "When it was given (UTC)"),
        _study("MedicationAdministration", MA.c.study_id),
    ),
    sorts={"effective-time": MA.c.effective}, default_sort="effective-time", study_param="study",
    patient_param="subject")

PROCEDURE = StoredType(
    "Procedure", fhir.Procedure, PR, index_procedure, examples.PROCEDURE, rank=2, prefetch=prefetch_subjects,
    search=(
        *_subject("Procedure", PR.c.patient_id),
        param("status", "code", PR.c.status, "Procedure.status", "Procedure status",
              systems=("http://hl7.org/fhir/event-status",)),
        param("code", "coding", (PR.c.code_system, PR.c.code), "Procedure.code", "The procedure's code"),
        param("date", "datetime", PR.c.performed, "Procedure.performed", "When it was performed (UTC)"),
        _study("Procedure", PR.c.study_id),
    ),
    sorts={"date": PR.c.performed}, default_sort="date", study_param="study", patient_param="subject")

#: provenance_target rows of a Provenance (the resources it names)
_TARGETS = (PV.c.id, PT.c.id, PT.c.target_type, PT.c.target_id)

PROVENANCE = StoredType(
    "Provenance", fhir.Provenance, PV, index_provenance, examples.PROVENANCE, rank=8, child_tables=(PT,),
    search=(
        param("target", "linked", _TARGETS, "Provenance.target", "A resource it is about (Type/id)"),
        param("patient", "reference", PV.c.patient_id, "Provenance.target.where(resolve() is Patient)",
              "The patient its targets are about", targets=("Patient",)),
        param("recorded", "datetime", PV.c.recorded, "Provenance.recorded", "When it was recorded (UTC)"),
        param("study", "reference", PV.c.study_id, "Provenance.target",
              "The research study of the resources it is about", targets=("ResearchStudy",), custom=True),
    ),
    sorts={"recorded": PV.c.recorded}, default_sort="recorded", study_param="study", patient_param="patient")
