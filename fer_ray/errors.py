"""Errors that the CLI turns into one line and a non-zero exit code instead of a traceback."""


class FerRayError(Exception):
    """A problem the user can fix (bad input, missing file, incompatible bundle). Exit code 1."""


class UsageError(FerRayError):
    """A bad command-line argument. Exit code 2."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()
