"""The lab's own error: the product's errors are core's (core/errors.py); only the lab raises this one."""

from topdeck.core.errors import TopdeckError


class LabError(TopdeckError):
    """The local lab could not be started, stopped or controlled."""
