"""The one exception type the CLI turns into a single error line and a non-zero exit."""


class GenscaleError(Exception):
    """A user-facing error: the message names the file, key or value and what is wrong."""


class RankStopped(GenscaleError):
    """A data-parallel rank stopped because another failed (or told it to stop); that one says why."""
