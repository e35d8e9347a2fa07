"""python -m tfp_flows train resumes a backup made in a later epoch at that epoch.

`tfp_flows.callbacks.BackupAndRestore` no longer moves `fit`'s start epoch through Keras'
private `Model._initial_epoch`; the command passes `fit(initial_epoch=...)` itself. With
8 steps per epoch, Ctrl-C during step 11 (epoch 1) leaves the backup of step 10; the
same command resumes in epoch 1 and runs exactly the 6 missing steps (without the
epoch it would be refused: "fit started at epoch 0").
"""

import os
import re
import signal
import sys

import pytest
from absl import flags

from tfp_flows.cli import app
from tfp_flows.cli import backup as backup_lib

# 200 points, 160 of them for training in batches of 20: 8 steps per epoch.
_ARGS = ("train", "--preset=nsf", "--dataset=two_moons", "--num_points=200",
         "--batch_size=20", "--num_layers=1", "--hidden_units=8", "--run_eagerly",
         "--verbose=0", "--noplot", "--noexport_saved_model", "--backup_steps=2",
         "--epochs=2")


def _run(capsys, run_dir):
  flags.FLAGS.unparse_flags()
  status = app.main(flags.FLAGS(["tfp_flows", *_ARGS, f"--output_dir={run_dir}"]))
  return (status, *capsys.readouterr())


def test_resume_in_a_later_epoch(capsys, tmp_path, monkeypatch):
  run_dir = str(tmp_path / "run")

  def ctrl_c_at_step_11(progress, batch, logs=None):
    del batch, logs
    if progress.done() + 1 == 11:
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(backup_lib._Progress, "on_train_batch_begin", ctrl_c_at_step_11,  # pylint: disable=protected-access
                      raising=False)
  status, _, err = _run(capsys, run_dir)
  assert status == 130 and err.startswith("interrupted at step 11 of 16;"), err
  monkeypatch.undo()
  status, out, err = _run(capsys, run_dir)
  assert status == 0, err
  assert "Resuming from the backup" in out and "10 of 16 steps done." in out, out
  assert re.search(r"Training took \d+ s for 6 steps\.", out), out
  assert not os.path.exists(os.path.join(run_dir, "backup"))


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
