"""User-facing errors.

Anything a user can cause (a bad file, a missing column, an unknown option) raises a
:class:`CnnlabError` subclass whose message names the file, field or value at fault.
The CLI prints the message and exits with status 2, without a traceback.
"""

from __future__ import annotations


class CnnlabError(Exception):
    """Base class for errors caused by user input or environment, not by a bug."""

    exit_code = 2


class DataError(CnnlabError):
    """A data source could not be read or is not usable (bad image, bad CSV, too few classes)."""


class ConfigError(CnnlabError):
    """A configuration file or override is invalid."""


class ModelError(CnnlabError):
    """A model name, weight file or model card is invalid."""


class DownloadError(CnnlabError):
    """A download failed, was interrupted or did not verify."""


class TrainingError(CnnlabError):
    """Training cannot continue (e.g. the loss became NaN or infinite)."""
