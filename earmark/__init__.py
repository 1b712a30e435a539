"""Earmark: find a catalogue's recordings inside AI-generated and uploaded audio.

Python API (the CLI is a thin layer over it)::

    import earmark
    with earmark.Index.open_writer("cat.fpindex") as idx:     # create / add / remove
        idx.add(["catalogue/"], jobs=2)
    idx = earmark.Index.open("cat.fpindex")                   # read-only, memory-mapped
    result = idx.match_file("suspect.wav")                    # -> QueryResult
    for m in result.matches:                                  # -> Match (evidence)
        print(m.reference.path, m.query_start, m.reference_start, m.speed, m.pitch_semitones)
"""

__version__ = "0.1.0"

from earmark.errors import AudioError, EarmarkError, IndexError_, MetadataError  # noqa: E402
from earmark.evidence import Match, QueryResult, Reference  # noqa: E402
from earmark.fingerprint.config import (FingerprintConfig, MatchConfig,  # noqa: E402
                                        MATCH_PRESETS, PRESETS)


def __getattr__(name: str):
    # The index pulls in Numba kernels and SciPy: imported on first use, so that
    # `import earmark` (and every `fp` command) starts fast.
    if name in ("Index", "default_index_path"):
        from earmark.index import catalogue

        return getattr(catalogue, name)
    raise AttributeError(f"module 'earmark' has no attribute {name!r}")

__all__ = ["Index", "Match", "QueryResult", "Reference", "FingerprintConfig", "MatchConfig",
           "PRESETS", "MATCH_PRESETS", "EarmarkError", "AudioError", "IndexError_",
           "MetadataError", "default_index_path", "open_index"]


def open_index(path=None):
    """Open an index read-only (``$FP_INDEX`` or the default location when ``path`` is None)."""
    from earmark.index.catalogue import Index

    return Index.open(path)
