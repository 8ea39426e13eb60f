"""User-facing errors.

`DistillSpecError` marks mistakes a user can fix (bad option, missing file, incompatible
models). The CLI prints these as one line and exits non-zero instead of a traceback; any
other exception is a bug and keeps its traceback.
"""


class DistillSpecError(ValueError):
    """A problem with the user's input, explained in the message."""
