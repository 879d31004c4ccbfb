"""The one exception conversion raises for anything a user can fix."""


class ConversionError(Exception):
    """A conversion step failed for a reason the message names (file and what is wrong)."""
