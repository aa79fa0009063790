"""User-facing errors.

Anything a user can cause (a bad file, a bad option) raises :class:`DnalmError` with a
one-line message that names the file, line or record and what is wrong. The CLI prints the
message on stderr and exits with status 2, never with a traceback.
"""

from __future__ import annotations


class DnalmError(Exception):
    """An error caused by the user's input; its message is shown as one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")).strip())


class ConfigError(DnalmError):
    """A bad command, config key or override value."""


class InputError(DnalmError):
    """A malformed input file (FASTA, GFF3, CSV, VCF, checkpoint, ...)."""
