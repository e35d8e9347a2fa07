"""The command line's error types: shown as one message, never as a traceback."""

__all__ = ["Interrupted", "UsageError"]


class UsageError(ValueError):
  """A bad flag value, missing file or malformed input that the user can fix.

  `python -m tfp_flows` prints the message to stderr and exits with status 2; any
  other exception is a bug and keeps its traceback.
  """


class Interrupted(Exception):
  """Ctrl-C stopped training; the message says what was saved and how to resume.

  `python -m tfp_flows` prints it to stderr and exits with status 130 (128 + SIGINT),
  the shell's status for a command stopped by Ctrl-C.
  """
