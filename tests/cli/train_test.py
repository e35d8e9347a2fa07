"""python -m tfp_flows train: resumable after Ctrl-C, and --steps_per_epoch as announced.

Step counts are read from the saved model.keras itself (the optimizer's iteration
variable in its weights file), not from what the command line prints. Ctrl-C is a
real SIGINT: sent to a `python -m tfp_flows` subprocess once its first backup exists,
and, in process, sent by the test to itself as a chosen training step begins.
"""

import io
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import pytest
from absl import flags

import tfp_flows
from tfp_flows import fit_data
from tfp_flows.cli import app
from tfp_flows.cli import backup as backup_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(tfp_flows.__file__)))
# 200 points, 160 of them for training in batches of 20: 8 steps per epoch.
_SMALL = ("--preset=nsf", "--dataset=two_moons", "--num_points=200", "--batch_size=20",
          "--num_layers=1", "--hidden_units=8", "--run_eagerly", "--verbose=0",
          "--noplot", "--noexport_saved_model", "--backup_steps=2")


def _cli(capsys, *args):
  flags.FLAGS.unparse_flags()
  status = app.main(flags.FLAGS(["tfp_flows", *args]))
  out, err = capsys.readouterr()
  return status, out, err


def _saved_steps(run_dir):
  """The optimizer's iteration count stored in run_dir/model.keras."""
  with zipfile.ZipFile(os.path.join(run_dir, "model.keras")) as archive:
    weights = io.BytesIO(archive.read("model.weights.h5"))
  with h5py.File(weights, "r") as f:
    return int(f["optimizer/vars/0"][()])


def test_steps_per_epoch_longer_than_the_data_runs_as_announced(capsys, tmp_path):
  # 160 rows in batches of 64 are 3 batches; 2 epochs of 7 steps repeat the data.
  run_dir = str(tmp_path / "run")
  status, out, err = _cli(capsys, "train", *_SMALL, "--batch_size=64",
                          "--steps_per_epoch=7", "--epochs=2", f"--output_dir={run_dir}")
  assert status == 0, err
  assert "for 2 epochs of 7 steps." in out
  assert _saved_steps(run_dir) == 14  # was 6: Keras stopped when the arrays ran out


def test_training_data_runs_without_tf_data_autotuning(capsys, tmp_path, monkeypatch):
  # On 2 cores the autotuner left whole epochs on one core (tfp_flows.fit_data): both
  # the arrays path and the --steps_per_epoch stream go through `without_autotuning`.
  tuned = []
  original = fit_data.without_autotuning
  monkeypatch.setattr(fit_data, "without_autotuning",
                      lambda dataset: tuned.append(dataset) or original(dataset))
  for i, extra in enumerate([(), ("--steps_per_epoch=3",)]):
    status, _, err = _cli(capsys, "train", *_SMALL, "--epochs=1", *extra,
                          f"--output_dir={tmp_path / str(i)}")
    assert status == 0, err
    assert len(tuned) == i + 1


def _ctrl_c_at(step):
  """A `_Progress.on_train_batch_begin` that sends this process SIGINT, as Ctrl-C
  does, when training step `step` (1-based, the optimizer's count) begins."""

  def on_train_batch_begin(progress, batch, logs=None):
    del batch, logs
    if progress.done() + 1 == step:
      os.kill(os.getpid(), signal.SIGINT)

  return on_train_batch_begin


def test_interrupted_training_resumes_from_its_backup(capsys, tmp_path, monkeypatch):
  run_dir = str(tmp_path / "run")
  args = ("train", *_SMALL, "--epochs=3", f"--output_dir={run_dir}")
  backup_dir = os.path.join(run_dir, "backup")
  handler = signal.getsignal(signal.SIGINT)
  # Ctrl-C before the first backup: nothing to resume.
  monkeypatch.setattr(backup_lib._Progress, "on_train_batch_begin", _ctrl_c_at(1),
                      raising=False)
  status, _, err = _cli(capsys, *args)
  assert status == 130
  assert err == ("interrupted at step 1 of 24; backups are every 2 steps and at epoch "
                 "ends, and none was written yet: nothing was saved.\n")
  # SIGINT during step 5 stops training after it; the backups of steps 2 and 4 exist.
  monkeypatch.setattr(backup_lib._Progress, "on_train_batch_begin", _ctrl_c_at(5))
  status, out, err = _cli(capsys, *args)
  assert status == 130 and "Resuming" not in out
  assert err == (f"interrupted at step 5 of 24; backups are every 2 steps and at epoch "
                 f"ends: the last one is in {backup_dir}; run the same command again to "
                 "resume from it (--noresume starts afresh).\n")
  assert not os.path.exists(os.path.join(run_dir, "model.keras"))
  assert signal.getsignal(signal.SIGINT) is handler  # restored after training
  monkeypatch.undo()

  # Other settings would mix two runs: refused, and the backup is kept.
  status, _, err = _cli(capsys, *args, "--epochs=4", "--learning_rate=0.01")
  assert status == 2 and err.count("\n") == 1
  assert (f"error: '{backup_dir}' holds the backup of an interrupted run with other "
          "settings (--epochs=3 there, 4 here; --learning_rate=0.002 there, 0.01 here): "
          "rerun with its settings to resume it, or pass --noresume") in err

  # The same command resumes after step 4 and runs the 20 missing steps.
  status, out, err = _cli(capsys, *args)
  assert status == 0, err
  assert f"Resuming from the backup in {backup_dir}: 4 of 24 steps done." in out
  assert re.search(r"Training took \d+ s for 20 steps\.", out), out
  assert _saved_steps(run_dir) == 24
  assert not os.path.exists(backup_dir)  # a finished run leaves no resume point


def test_noresume_deletes_the_backup_and_starts_afresh(capsys, tmp_path, monkeypatch):
  # Under XLA (the default), where the train step is one compiled call.
  run_dir = str(tmp_path / "run")
  args = ("train", *(a for a in _SMALL if a != "--run_eagerly"), "--epochs=2",
          f"--output_dir={run_dir}")
  monkeypatch.setattr(backup_lib._Progress, "on_train_batch_begin", _ctrl_c_at(9),
                      raising=False)
  status, _, err = _cli(capsys, *args)
  assert status == 130 and err.startswith("interrupted at step 9 of 16;"), err
  monkeypatch.undo()
  status, out, err = _cli(capsys, *args, "--noresume")
  assert status == 0, err
  assert f"Deleted the backup in {os.path.join(run_dir, 'backup')} (--noresume)." in out
  assert "Resuming" not in out and re.search(r"took \d+ s for 16 steps\.", out), out
  assert _saved_steps(run_dir) == 16


def test_ctrl_c_in_a_real_process_then_resume(tmp_path):
  run_dir = tmp_path / "run"
  command = [sys.executable, "-m", "tfp_flows", "train", *_SMALL, "--epochs=3",
             f"--output_dir={run_dir}"]
  env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL="3")
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
  deadline = time.time() + 240
  backup_dir = run_dir / "backup"
  # The backup directory holds settings.json from the start; wait for a state file.
  while not (backup_dir.is_dir() and len(os.listdir(backup_dir)) > 1):
    assert process.poll() is None and time.time() < deadline, process.communicate()
    time.sleep(0.02)
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 130, err
  assert "Traceback" not in err
  (line,) = [l for l in err.splitlines() if l.startswith("interrupted")]
  interrupted_at = int(re.match(r"interrupted at step (\d+) of 24; backups are every 2 "
                                r"steps and at epoch ends: the last one is in (\S+); "
                                r"run the same command again to resume", line).group(1))
  assert line.split("is in ")[1].startswith(f"{backup_dir};")
  assert not (run_dir / "model.keras").exists()

  result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          check=False, env=env)
  assert result.returncode == 0, result.stderr
  resumed_at = int(re.search(r"Resuming from the backup in \S+: (\d+) of 24 steps done",
                             result.stdout).group(1))
  # A backup after every second step: at most one step is lost.
  assert 2 <= resumed_at <= interrupted_at <= resumed_at + 1
  assert re.search(rf"Training took \d+ s for {24 - resumed_at} steps\.", result.stdout)
  assert _saved_steps(run_dir) == 24
  assert not backup_dir.exists()
