"""The audit trail: one FHIR AuditEvent (IHE BALP) per interaction, stored read-only and chained by hashes so that
a changed, removed or inserted row is found (`trial-fhir audit verify`).

`events` builds the AuditEvents (pure functions), `chain` appends them inside a write transaction and verifies the
chain, `log` commits those of reads and refused requests in groups, `service` declares AuditEvent as a stored,
searchable type that no client can write.
"""
