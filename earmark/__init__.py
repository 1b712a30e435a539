"""Earmark: find a catalogue's recordings inside AI-generated and uploaded audio."""

__version__ = "0.1.0"
