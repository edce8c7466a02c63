"""Exceptions raised by txfast.

Every error derives from :class:`TxfastError`. Errors raised by the native core are created
there under this module's path and re-exported here, so ``except txfast.exceptions.X`` works
whichever layer raised it.
"""

from txfast._core import ConfigError, InputError, SnapshotError, TxfastError

__all__ = [
    "ConfigError",
    "InputError",
    "InvalidCursorError",
    "ModelMismatchError",
    "NotFoundError",
    "ParityError",
    "RegistryError",
    "SnapshotError",
    "StoreError",
    "TxfastError",
]


class StoreError(TxfastError):
    """The alert store cannot be opened or written."""


class NotFoundError(StoreError, LookupError):
    """A transaction (or another stored object) named by the caller does not exist."""


class InvalidCursorError(StoreError, ValueError):
    """A pagination cursor is malformed or was made for another sort order."""


class ModelMismatchError(TxfastError, ValueError):
    """A model was trained on other features than the ones the scorer computes."""


class RegistryError(TxfastError, ValueError):
    """A registry name, version or file is unknown, missing or invalid."""


class ParityError(TxfastError, ValueError):
    """An exported model's scores differ from the native model's beyond tolerance."""
