"""User-facing errors.

`DistillSpecError` marks mistakes a user can fix (bad option, missing file, incompatible
models). The CLI prints these as one line and exits non-zero instead of a traceback; any
other exception is a bug and keeps its traceback.
"""


class DistillSpecError(ValueError):
    """A problem with the user's input, explained in the message."""


class DistillSpecWarning(UserWarning):
    """Something the user should know that does not stop the work: a damaged cache that is
    rebuilt, an option that has no effect in this combination. The CLI prints these as one
    `distillspec: warning: ...` line; library callers get them through `warnings`."""
