"""The one exception the data layer raises for user-facing data problems.

:class:`DataError` subclasses :class:`ValueError`, so callers that already
catch ``ValueError`` keep working. Its message is one line that names the
file, column and row where they apply, e.g.
``train.csv: column 'age', row 17: 'abc' is not a number``.

Example:
    >>> try:
    ...     raise DataError("train.csv: file has no rows")
    ... except ValueError as e:
    ...     print(e)
    train.csv: file has no rows
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A problem with the user's data or data options; the message is one line."""
