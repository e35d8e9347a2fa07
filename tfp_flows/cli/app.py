"""The entry point: parse the flags once, run one command, turn user errors into status 2.

`run` is what `python -m tfp_flows` and the `tfp-flows` console script call.
"""

import sys

from absl import app

from tfp_flows.cli import commands
from tfp_flows.cli import config as config_lib
from tfp_flows.cli import train
from tfp_flows.cli.errors import Interrupted
from tfp_flows.cli.errors import UsageError

__all__ = ["COMMANDS", "main", "run"]

COMMANDS = {"train": train.train, "sample": commands.sample,
            "evaluate": commands.evaluate, "export": commands.export}


def main(argv):
  """Runs the command in `argv[1]` (default train) with the parsed flags.

  Args:
    argv: the positional arguments absl leaves after parsing the flags.

  Returns:
    The exit status: 0; 2 after printing a user error (an unknown command, a bad flag
    combination, a missing or malformed file) as one line on stderr; 130 after Ctrl-C,
    with one line saying what was saved.
  """
  command = argv[1] if len(argv) > 1 else "train"
  if command not in COMMANDS or len(argv) > 2:
    print(f"usage: python -m tfp_flows {{{','.join(COMMANDS)}}} [--flags]; got "
          f"{' '.join(argv[1:])!r}. Run python -m tfp_flows --help for the flags.",
          file=sys.stderr)
    return 2
  try:
    return COMMANDS[command](config_lib.from_flags())
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except Interrupted as e:
    print(e, file=sys.stderr)
    return 130
  except KeyboardInterrupt:
    print(f"interrupted: {command} stopped before it finished.", file=sys.stderr)
    return 130


def run():
  """Parses `sys.argv` with absl and exits with `main`'s status."""
  app.run(main)
