"""Resumable training: back up the whole training state and resume mid-epoch exactly."""

import os

import keras
import numpy as np

__all__ = ["BackupAndRestore"]

_STATE_FILE = "training_state.npz"


class BackupAndRestore(keras.callbacks.Callback):
  """Backs up the training state during `fit` and resumes an interrupted run exactly.

  ```python
  backup = tff.callbacks.BackupAndRestore("runs/backup", save_freq=100)
  model.fit(x, epochs=20, batch_size=64, shuffle=False, callbacks=[backup],
            initial_epoch=backup.initial_epoch)
  # killed at epoch 7, step 340: run the same script again; fit starts at epoch 7
  # (`backup.initial_epoch`), restores the state saved after step 300 of it, skips
  # the 300 batches already trained on and ends with the weights an uninterrupted run
  # would have had.
  ```

  `fit` learns where to start from its public `initial_epoch` argument:
  `tfp_flows.FlowModel.fit` passes `backup.initial_epoch` (the backup's epoch, 0 when
  there is none) itself when the caller gives no `initial_epoch`; with another Keras
  model, pass it to `fit`. A fit that starts
  at another epoch than the backup's raises a `ValueError` at its first epoch, rather
  than training the restored state on epochs it has already seen. (Keras' own
  `BackupAndRestore` sets the private `Model._initial_epoch` instead; this callback
  reaches no private Keras name.)

  `keras.callbacks.BackupAndRestore` falls short of an exact resume in two ways: it
  saves `model.save_weights`, which leaves out the layers' `keras.random.SeedGenerator`
  states (dequantisation noise, Russian-roulette and Hutchinson draws restart from
  their initial seeds), and after a mid-epoch backup it restarts the epoch at its
  first batch, training again on the batches it had already used.

  This callback saves, atomically (write then rename), every variable of the
  training state: `model.variables` (weights, ActNorm's `initialized` flag,
  spectral-norm vectors, every SeedGenerator state), the optimizer's variables
  (iteration count, moments) and the metrics' running sums; and the position (epoch,
  steps done in it). On restore it loads them and skips the batches of the interrupted
  epoch that were already trained on: they are drawn from the data pipeline and
  discarded, so the next step sees the same batch as in the uninterrupted run.

  The resumed run is exact when the batches come in a fixed order: `shuffle=False`
  (shuffle the arrays once beforehand), or a `tf.data` pipeline in a fixed order.
  With `steps_per_epoch`, Keras draws every epoch from one stream of batches, epoch e
  starting where epoch e - 1 stopped; `FlowModel.fit` then tells this callback
  (`follow_stream`), and a resumed run also discards the batches of the epochs before
  the backup's. Keras' `shuffle=True` draws each epoch's order
  from a stateful op, so a resumed epoch would see another order. With
  `MultiWorkerMirroredStrategy` only the chief writes; `backup_dir` must then be on a
  file system every worker can read.

  Args:
    backup_dir: directory for the backup; used by this run only.
    save_freq: "epoch" (back up at the end of every epoch) or a number of training
      steps between backups.
    delete_checkpoint: delete the backup when `fit` completes.
    save_at_epoch_end: with a number of steps as `save_freq`, also back up at the end
      of every epoch that ran steps since the last backup (the step count restarts
      there), so that a backup never lags an epoch boundary.
  """

  def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True,
               save_at_epoch_end=False):
    super().__init__()
    if not backup_dir:
      raise ValueError(f"backup_dir must be a directory path; got {backup_dir!r}.")
    if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
      raise ValueError("save_freq must be 'epoch' or a positive number of steps; got "
                       f"{save_freq!r}.")
    self.backup_dir = str(backup_dir)
    self.save_freq = save_freq
    self.delete_checkpoint = bool(delete_checkpoint)
    self.save_at_epoch_end = bool(save_at_epoch_end)
    self._path = os.path.join(self.backup_dir, _STATE_FILE)
    self._epoch = 0
    self._steps_in_epoch = 0
    self._steps_since_save = 0
    self._resume = None
    self._skip_next = False
    self._first_epoch = True
    self._batches_per_epoch = None
    self._discard = 0

  @property
  def initial_epoch(self):
    """The epoch (0-based) `fit` resumes at: the backup's, or 0 without a backup.

    Pass it as `fit(initial_epoch=...)`. A backup made mid-epoch resumes inside that
    epoch; one made at the end of the last epoch gives `epochs` (nothing left to run).
    """
    if not os.path.exists(self._path):
      return 0
    with np.load(self._path) as saved:
      return int(saved["epoch"])

  def follow_stream(self, batches_per_epoch):
    """Says that `fit` draws all epochs from one endless stream, `batches_per_epoch` each.

    Keras does so when `fit` is given `steps_per_epoch` (its iterator carries on from
    epoch to epoch); `tfp_flows.FlowModel.fit` calls this then, with the batches an
    epoch draws (`steps_per_epoch`, rounded up to whole executions). A run resumed at
    epoch e then discards `e * batches_per_epoch` batches before the steps of epoch e
    that were already trained on, and sees the batches the uninterrupted run saw.
    Applies to the next `fit` only.
    """
    if int(batches_per_epoch) < 1:
      raise ValueError(f"batches_per_epoch must be positive; got {batches_per_epoch!r}.")
    self._batches_per_epoch = int(batches_per_epoch)

  def _state_variables(self):
    """(model and optimizer variables, metric variables), in a fixed order."""
    model = self.model
    return (list(model.variables) + list(model.optimizer.variables),
            [v for metric in model.metrics for v in metric.variables])

  def on_train_begin(self, logs=None):
    self._epoch, self._steps_in_epoch, self._steps_since_save = 0, 0, 0
    self._resume, self._skip_next, self._first_epoch = None, False, True
    self._discard = 0
    batches_per_epoch, self._batches_per_epoch = self._batches_per_epoch, None
    _unwrap_train_function(self.model)
    if not os.path.exists(self._path):
      return
    if not self.model.optimizer.built:
      self.model.optimizer.build(self.model.trainable_variables)
    with np.load(self._path) as saved:
      values = [saved[f"variable_{i}"] for i in range(int(saved["num_variables"]))]
      epoch, steps = int(saved["epoch"]), int(saved["steps"])
    variables, metric_variables = self._state_variables()
    if ([tuple(v.shape) for v in values] !=
        [tuple(v.shape) for v in variables + metric_variables]):
      raise ValueError(f"The backup in {self.backup_dir!r} was written by another model "
                       "or optimizer (its variables have other shapes); delete it or "
                       "use another backup_dir.")
    for variable, value in zip(variables, values):
      variable.assign(value)
    # Metrics are reset when each epoch begins, so their sums are restored then.
    self._resume = {"epoch": epoch, "steps": steps, "metrics": values[len(variables):]}
    self._discard = epoch * batches_per_epoch if batches_per_epoch else 0
    if steps or self._discard:
      self._wrap_train_function()

  def _resuming(self, epoch):
    return self._resume is not None and self._resume["epoch"] == epoch

  def on_epoch_begin(self, epoch, logs=None):
    if self._first_epoch and self._resume is not None and epoch != self._resume["epoch"]:
      raise ValueError(
          f"The backup in {self.backup_dir!r} resumes training at epoch "
          f"{self._resume['epoch']} (0-based), but fit started at epoch {epoch}: pass "
          "initial_epoch=backup.initial_epoch to fit (backup being this callback), or "
          "delete the backup to start afresh.")
    self._first_epoch = False
    self._epoch, self._steps_in_epoch = epoch, 0
    if self._resuming(epoch) and self._resume["steps"]:
      # Mid-epoch: the metrics resume their running sums over the epoch's first steps.
      for variable, value in zip(self._state_variables()[1], self._resume["metrics"]):
        variable.assign(value)
      self._steps_in_epoch = self._resume["steps"]

  def on_train_batch_begin(self, batch, logs=None):
    self._skip_next = self._resuming(self._epoch) and batch < self._resume["steps"]

  def on_train_batch_end(self, batch, logs=None):
    done = batch + 1
    if done <= self._steps_in_epoch:
      return  # a skipped, already trained batch
    self._steps_since_save += done - self._steps_in_epoch
    self._steps_in_epoch = done
    if self.save_freq != "epoch" and self._steps_since_save >= self.save_freq:
      self._save(self._epoch, done)

  def on_epoch_end(self, epoch, logs=None):
    if self._resuming(epoch):
      self._resume = None
      _unwrap_train_function(self.model)
    if self.save_freq == "epoch" or (self.save_at_epoch_end and self._steps_since_save):
      self._save(epoch + 1, 0)

  def on_train_end(self, logs=None):
    _unwrap_train_function(self.model)
    if self.delete_checkpoint and os.path.exists(self._path):
      os.remove(self._path)

  def _save(self, epoch, steps):
    self._steps_since_save = 0
    if not self.model.distribute_strategy.extended.should_checkpoint:
      return  # a non-chief worker of a multi-worker run
    variables, metric_variables = self._state_variables()
    arrays = {f"variable_{i}": keras.ops.convert_to_numpy(v)
              for i, v in enumerate(variables + metric_variables)}
    os.makedirs(self.backup_dir, exist_ok=True)
    temporary = self._path + ".tmp.npz"
    np.savez(temporary, num_variables=len(arrays), epoch=epoch, steps=steps, **arrays)
    # The rename is atomic: an interruption while writing leaves the last backup whole.
    os.replace(temporary, self._path)

  def _wrap_train_function(self):
    """Makes `model.train_function` discard the batches this callback says to skip."""
    model = self.model
    train_function = model.train_function

    def resumable_train_function(iterator):
      for _ in range(self._discard):  # the earlier epochs' part of the stream
        next(iterator)
      self._discard = 0
      if not self._skip_next:
        return train_function(iterator)
      for _ in range(model.steps_per_execution):
        next(iterator)
      return model.get_metrics_result()

    resumable_train_function.wrapped = train_function
    model.train_function = resumable_train_function


def _unwrap_train_function(model):
  # An interrupted fit never reaches on_train_end, so the next fit may find the wrapper.
  wrapped = getattr(getattr(model, "train_function", None), "wrapped", None)
  if wrapped is not None:
    model.train_function = wrapped
