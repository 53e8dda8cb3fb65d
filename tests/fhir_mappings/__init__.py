"""Pure, table-driven tests of `fhir_mappings/`: no database, no HTTP. The cases are in tests/data/mappings/."""
