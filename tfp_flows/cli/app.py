"""The entry point: parse the flags once, run one command, turn user errors into status 2.

`run` is what `python -m tfp_flows` and the `tfp-flows` console script call.

The command line's modules: `app` (this entry point), `config` (the flags, read once
into a `Config`), `train`, `backup` (resumable training), `commands` (sample,
evaluate, export), `run_files` (model.keras and run.json), `datasets`, `presets`,
`outputs` (metrics, samples, SavedModel), `plots`, `diagnostics` (TensorBoard
summaries), `errors`. Importing `tfp_flows.cli` defines no flags; importing
`tfp_flows.cli.app` (or `config`) does.
"""

import sys

from absl import app
from absl import flags

from tfp_flows import cli
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
  """Parses `sys.argv` with absl and exits with `main`'s status.

  absl's --help prints the docstring and the key flags of the `__main__` module, which
  is tfp_flows/__main__.py or the tfp-flows console script; both get the command
  line's docstring (`tfp_flows.cli`) and flags (`tfp_flows.cli.config`).
  """
  sys.modules["__main__"].__doc__ = cli.__doc__
  for flag in flags.FLAGS.get_flags_for_module(config_lib.__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)
