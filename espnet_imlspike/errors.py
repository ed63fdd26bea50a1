"""The package's error types.

Every error this package raises for a user's mistake (a bad option, a model that does
not fit a tool, a bad path or data file) derives from :class:`ImlSpikeError`; each CLI's
``main()`` turns it into ``prog: error: message`` and exit code 2, never a traceback.
Errors that are also ``ValueError`` (bad options and inputs) keep that base so callers
that catch ``ValueError`` (ESPnet's config checks, user code) still do.
"""


class ImlSpikeError(Exception):
    """Base of the package's errors for user mistakes."""


class OptionError(ImlSpikeError, ValueError):
    """A configuration value that makes no sense; the message names the option."""


class InputError(ImlSpikeError, ValueError):
    """Input data a model or tool cannot process (shape, values, lengths, files)."""


class ModelLoadError(ImlSpikeError):
    """A config/checkpoint pair that cannot be loaded for the requested purpose."""
