"""Failure semantics through the real stack: worker death, request ids, tenants."""
