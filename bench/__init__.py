"""Earmark benchmark harness (``fp bench``)."""
