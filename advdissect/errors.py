"""Errors a user is meant to read: each names the file, key or row at fault and what is allowed."""


class AdvDissectError(Exception):
    """Base class of every error the workflow reports to its user."""


class ConfigError(AdvDissectError):
    """A config value is unknown, mistyped or out of range."""


class DatasetError(AdvDissectError):
    """A Broden-format dataset is incomplete or malformed."""


class ModelError(AdvDissectError):
    """An architecture, layer or weights file cannot be used."""


class AttackError(AdvDissectError):
    """An attack cannot run as configured (e.g. it needs labels the dataset lacks)."""


class ArtifactError(AdvDissectError):
    """An intermediate file does not belong to the stage, model or config that reads it."""
