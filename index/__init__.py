"""The Earmark catalogue index: track metadata (SQLite, the source of truth for track
ids, see :mod:`earmark.index.metadata`) and fingerprint segments."""
