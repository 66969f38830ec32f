"""Errors that the CLI turns into one line and a non-zero exit code instead of a traceback."""


class FerRayError(Exception):
    """A problem the user can fix (bad input, missing file, incompatible bundle). Exit code 1."""


class UsageError(FerRayError):
    """A bad command-line argument. Exit code 2."""
