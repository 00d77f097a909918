"""Errors the user can act on: each message says what was wrong and what to do about it.

Every command-line front (``transfusion.cli.main``, ``train``/``pretrain``, ``data``) prints such
an error as one line, ``error: <message>``, on stderr and exits with :data:`USER_ERROR_EXIT`.
"""

#: the exit status of a command stopped by a TransfusionError (bad input, not a crash)
USER_ERROR_EXIT = 2


class TransfusionError(Exception):
    """Base class of every error transfusion raises on purpose."""


class DataError(TransfusionError):
    """A dataset file or folder is missing, malformed or unusable."""


class CheckpointError(TransfusionError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


class ConfigError(TransfusionError):
    """A setting, spec or command-line option is invalid."""


class InputError(TransfusionError, ValueError):
    """An op was given tensors it cannot work with (shape, dtype, NaN, too few datapoints)."""
