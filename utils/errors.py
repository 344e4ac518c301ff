"""Exceptions a person can act on: each names the file and the problem."""

from __future__ import annotations

from utils.log import plain


class SlideYoloError(Exception):
    """Base class of the project's user-facing errors (printed without a traceback by the CLIs)."""

    def __str__(self) -> str:
        """The message as one plain line: a coloured log prefix inside it (e.g. 'train: ') loses its ANSI codes."""
        return plain(super().__str__())


class ConfigError(SlideYoloError, ValueError):
    """A hyperparameter, data or model YAML is malformed: unknown key, missing key, value out of range."""


class DatasetError(SlideYoloError):
    """A dataset path is missing, a split is absent, or no usable image was found."""


class LabelError(DatasetError):
    """A label file has a malformed row or a class id out of range (names the file and line)."""


class CheckpointError(SlideYoloError):
    """A weights file is missing, unreadable or of an unsupported kind."""
