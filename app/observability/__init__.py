"""Metrics, structured logs, request ids and audit events."""
