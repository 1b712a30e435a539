"""Audio decoding and fingerprint extraction for Earmark.

Submodules
----------
audio
    Streaming decoding of audio/video files to mono float32 at a fixed sample rate,
    content hashing and basic usability checks.
"""
