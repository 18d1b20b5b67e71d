"""The bottom layer: errors, atomic io, parameters, provenance, seeding, formats, shared helpers."""
