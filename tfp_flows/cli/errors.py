"""The command line's user-error type: shown as one message, never as a traceback."""

__all__ = ["UsageError"]


class UsageError(ValueError):
  """A bad flag value, missing file or malformed input that the user can fix.

  `python -m tfp_flows` prints the message to stderr and exits with status 2; any
  other exception is a bug and keeps its traceback.
  """
