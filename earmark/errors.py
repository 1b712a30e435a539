"""Error types. Every user-facing failure is an :class:`EarmarkError` with a one-line message;
the CLI prints it and exits with status 2 (no traceback)."""


class EarmarkError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""


class AudioError(EarmarkError):
    """Audio could not be used: missing, empty, corrupt, unsupported, too short or silent."""


class IndexError_(EarmarkError):
    """The index is missing, unreadable, corrupt, or from a newer Earmark version."""


class MetadataError(EarmarkError):
    """A metadata file (e.g. ``--metadata tracks.csv``) is unreadable or malformed."""


IndexFormatError = IndexError_
