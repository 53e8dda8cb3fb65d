"""Pure mappings between the trial's domain model and FHIR R4 (fhir.resources R4B models). No I/O here."""
