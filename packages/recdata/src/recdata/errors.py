"""User-facing errors: one line on stderr and exit code 2, never a traceback wall."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """Bad input the user can fix: a malformed file, an unknown name, a mismatched checkpoint."""


class DataError(UserError):
    """The data files are missing, malformed or inconsistent."""


def report_and_exit(error: UserError) -> None:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def exit_on_user_error(fn: F) -> F:
    """Wrap a command so a UserError becomes `error: <message>` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as error:
            report_and_exit(error)

    return wrapper  # type: ignore[return-value]
