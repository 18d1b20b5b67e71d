"""Aggregated metrics, tables and figures."""
