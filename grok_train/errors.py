"""Exceptions raised by the training jobs; each message names the input at fault and the fix.

The CLI maps them to the project's exit codes: :class:`BadInputError` (and subclasses) -> 3,
:class:`MissingDependencyError` -> 4, :class:`ConfigError` -> 2. ``ConfigError`` is the project's one
config error, :class:`grok.config.ConfigError`, re-exported here.
"""

from __future__ import annotations

from grok.config import ConfigError

__all__ = ["BadInputError", "CheckpointNotFoundError", "ConfigError", "DatasetNotFoundError", "GrokTrainError",
           "ImageTokenMismatchError", "MissingDependencyError", "SequenceTooLongError"]


class GrokTrainError(Exception):
    """Base class of every error raised on purpose by ``grok_train``."""


class BadInputError(GrokTrainError):
    """An input (dataset, checkpoint, row) is missing or unusable; raised before training starts."""


class DatasetNotFoundError(BadInputError):
    """A dataset name@version, config or split does not exist."""


class CheckpointNotFoundError(BadInputError, FileNotFoundError):
    """A checkpoint, adapter or model directory referred to by a config does not exist."""


class ImageTokenMismatchError(BadInputError):
    """A row's ``<image>`` placeholders and its images differ in number."""


class SequenceTooLongError(BadInputError):
    """A tokenised row is longer than ``max_length``; the answer is never silently truncated."""


class MissingDependencyError(GrokTrainError, ImportError):
    """An optional dependency is not installed (the message names the ``pip install`` command)."""
