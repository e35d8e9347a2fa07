"""Resumable CLI training: a backup in <output_dir>/backup, resumed by the next run.

`train` backs up the whole training state (`tfp_flows.callbacks.BackupAndRestore`)
every `--backup_steps` steps and at every epoch end, next to the flags it depends on
(settings.json). Running the same command again resumes from the backup, unless
`--noresume` deletes it; a run with other settings is refused rather than mixed with
the backup. Ctrl-C ends training with one line saying where the backup is, so an
interrupted run loses at most the steps since the last backup. A finished run deletes
its backup once model.keras is written.

Ctrl-C during training asks training to stop after the current step (a SIGINT handler
sets a flag, and a callback raises at the step's end, after that step's backup). The
default handler would raise KeyboardInterrupt in whatever Python code runs at that
moment, which may be a garbage-collection callback that swallows it and prints a
traceback. A second Ctrl-C raises at once, for a step that takes too long.

The resumed run restores every variable (weights, optimizer, random-generator states)
and skips the batches of the interrupted epoch that were trained on, but the batch
order of that epoch is drawn again: the result is a run of the same length and
settings, not bit for bit the uninterrupted one.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import threading

import keras

from tfp_flows import callbacks
from tfp_flows.cli.errors import Interrupted
from tfp_flows.cli.errors import UsageError

__all__ = ["Backup"]

_SETTINGS_FILE = "settings.json"


class Backup:
  """The backup directory of one training run.

  Args:
    run_dir: the run's output directory; the backup is run_dir/backup.
    config: the command line's `Config`.
    total_steps: training steps of the whole run.
  """

  def __init__(self, run_dir, config, total_steps):
    self.directory = os.path.join(run_dir, "backup")
    self.every = config.backup_steps
    self.total_steps = total_steps
    self._settings = _settings(config)
    self._resume = config.resume
    self._progress = _Progress(self)

  def prepare(self):
    """Checks a backup left by an interrupted run, or deletes it (--noresume).

    Raises:
      UsageError: if the backup was written with other settings or is unreadable.
    """
    if os.path.isdir(self.directory):
      if not self._resume:
        shutil.rmtree(self.directory)
        print(f"Deleted the backup in {self.directory} (--noresume).")
      else:
        self._check_settings()
    os.makedirs(self.directory, exist_ok=True)
    temporary = os.path.join(self.directory, _SETTINGS_FILE + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
      json.dump(self._settings, f, indent=2)
    os.replace(temporary, os.path.join(self.directory, _SETTINGS_FILE))

  @property
  def initial_epoch(self):
    """The epoch `fit` starts at (`fit(initial_epoch=...)`): the backup's, else 0."""
    return callbacks.BackupAndRestore(self.directory).initial_epoch

  def callbacks(self):
    """The Keras callbacks that back up, restore and report the training state."""
    return [callbacks.BackupAndRestore(self.directory, save_freq=self.every,
                                       delete_checkpoint=False, save_at_epoch_end=True),
            self._progress]

  @contextlib.contextmanager
  def stop_on_ctrl_c(self):
    """Within: Ctrl-C stops training after the current step, as an `Interrupted` error.

    The error's message is `interrupted_message()`. Outside the main thread, where
    Python delivers no signals, only the KeyboardInterrupt is translated.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main_thread else None

    def request_stop(signum, frame):
      del signum, frame
      self._progress.stop_requested = True
      signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one is at once

    if in_main_thread:
      signal.signal(signal.SIGINT, request_stop)
    try:
      yield
    except KeyboardInterrupt:
      raise Interrupted(self.interrupted_message()) from None
    finally:
      if in_main_thread:  # None: a handler not set from Python; restore Python's
        signal.signal(signal.SIGINT,
                      signal.default_int_handler if previous is None else previous)

  @property
  def steps_this_run(self):
    """Training steps run by this process (a resumed run starts past the backup's)."""
    return self._progress.done() - self._progress.start

  def interrupted_message(self):
    """One line for Ctrl-C: how far training got and where its backup is."""
    when = (f"interrupted at step {self._progress.done()} of {self.total_steps}; backups "
            f"are every {self.every} steps and at epoch ends")
    if not self._holds_state():
      return f"{when}, and none was written yet: nothing was saved."
    return (f"{when}: the last one is in {self.directory}; run the same command again to "
            "resume from it (--noresume starts afresh).")

  def delete(self):
    """Removes the backup once the finished run is written."""
    shutil.rmtree(self.directory, ignore_errors=True)

  def _holds_state(self):
    return any(name != _SETTINGS_FILE for name in os.listdir(self.directory))

  def _check_settings(self):
    path = os.path.join(self.directory, _SETTINGS_FILE)
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise UsageError(f"{self.directory!r} holds a backup without readable settings "
                       f"({e}); pass --noresume to delete it and start afresh.") from None
    if not isinstance(saved, dict):
      saved = {}
    current = json.loads(json.dumps(self._settings))  # tuples as JSON lists
    differences = [f"--{name}={saved[name]} there, {value} here" if name in saved
                   else f"no --{name} there" for name, value in current.items()
                   if name not in saved or saved[name] != value]
    if differences:
      raise UsageError(
          f"{self.directory!r} holds the backup of an interrupted run with other "
          f"settings ({'; '.join(differences)}): rerun with its settings to resume it, "
          "or pass --noresume to delete it and start afresh.")


class _Progress(keras.callbacks.Callback):
  """The optimizer's step count (where a resumed run starts, how far it got); stops
  training at a step's end once Ctrl-C asked for it."""

  def __init__(self, backup):
    super().__init__()
    self._backup = backup
    self.start = 0
    self.stop_requested = False

  def done(self):
    return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

  def on_train_begin(self, logs=None):
    # After BackupAndRestore (earlier in the list) restored the optimizer's variables.
    self.start = self.done()
    if self.start:
      print(f"Resuming from the backup in {self._backup.directory}: {self.start} of "
            f"{self._backup.total_steps} steps done.")

  def on_train_batch_end(self, batch, logs=None):
    # After BackupAndRestore's on_train_batch_end, so this step's backup is written.
    if self.stop_requested:
      raise KeyboardInterrupt


def _settings(config):
  """The flags a backup depends on, by flag name: resuming with others would mix runs."""
  absolute = lambda path: path and os.path.abspath(path)
  return {"preset": config.preset, "dataset": config.dataset,
          "data_file": absolute(config.data_file), "data_dir": absolute(config.data_dir),
          "num_points": config.num_points, "test_fraction": config.test_fraction,
          "num_bits": config.num_bits, **dataclasses.asdict(config.architecture),
          "epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch,
          "batch_size": config.batch_size, "learning_rate": config.learning_rate,
          "weight_decay": config.weight_decay}
