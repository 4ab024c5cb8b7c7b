"""FHIR R4: storage, validation, search, REST router and operations."""
