"""User-facing errors. The CLI prints these without a traceback (``--debug`` shows it)."""


class TuneforgeError(Exception):
    """A problem with the user's input: config, data, model path. The message says what and where."""


class ConfigError(TuneforgeError):
    """A wrong, unknown or inconsistent configuration key."""


class NotSupportedError(TuneforgeError):
    """A known LLaMA-Factory feature that tuneforge does not implement yet."""


class DataError(TuneforgeError):
    """A dataset file, row or registry entry that cannot be used."""


class ModelError(TuneforgeError):
    """A model or adapter that cannot be found or loaded."""
