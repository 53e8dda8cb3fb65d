"""trial-fhir: a FHIR R4 interoperability service for clinical trials."""
