"""The one exception type that reaches the user as a one-line message and exit code 2."""


class GpulabError(Exception):
    """Bad input or an impossible request: the message names the problem and the fix."""


def first_line(error: BaseException) -> str:
    """An exception's message in one line, for a one-line message: its first non-empty line,
    or its type's name where it has no message."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
