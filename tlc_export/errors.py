"""Errors the user can fix: the CLI prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input: the message says what was wrong and what to do."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line (its type name when it has no message)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
