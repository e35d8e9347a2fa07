"""tfp_flows.callbacks.BackupAndRestore: an interrupted fit resumes to the exact weights.

The model draws random numbers in every training step: uniform dequantisation noise
(Dequantize) and the Russian-roulette term counts and Hutchinson probes of a residual
block, each from its layer's SeedGenerator; it also has ActNorm's data-dependent
initialisation and spectral-norm power-iteration vectors as non-trainable state, and
trains with Adam (moments, iteration count). The reference is one uninterrupted fit of
3 epochs x 8 steps. An interrupted run raises inside `fit` after some step of epoch 1;
a new model, built from another global seed (so nothing but the backup can make it
agree), resumes with the same callback (`fit(initial_epoch=backup.initial_epoch)`, Keras'
public argument), and must end with the reference's variables (model, optimizer) and log
the reference's epoch NLLs.
"""

import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows import callbacks

EPOCHS = 3
BATCH = 8
STEPS = 8  # per epoch


def _data():
  return np.random.default_rng(0).integers(0, 8, size=(BATCH * STEPS, 2)).astype("float32")


def _model(seed):
  keras.utils.set_random_seed(seed)
  model = tff.FlowModel([tff.layers.Dequantize(num_bits=3, alpha=1e-3),
                         tff.layers.ActNorm(),
                         tff.layers.ResidualBlock(hidden_units=(8,), n_exact_terms=1)],
                        [2])
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
  return model


class _Interrupt(keras.callbacks.Callback):
  """Raises after training step `step` (0-based) of epoch `epoch`, like a preemption."""

  def __init__(self, epoch, step):
    super().__init__()
    self.epoch, self.step, self.current = epoch, step, None

  def on_epoch_begin(self, epoch, logs=None):
    self.current = epoch

  def on_train_batch_end(self, batch, logs=None):
    if (self.current, batch) == (self.epoch, self.step):
      raise KeyboardInterrupt("preempted")


def _fit(model, backup=None, interrupt=None):
  extra = [c for c in (backup, interrupt) if c is not None]
  return model.fit(_data(), batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                   initial_epoch=0 if backup is None else backup.initial_epoch,
                   callbacks=extra).history


def _state(model):
  return [keras.ops.convert_to_numpy(v)
          for v in list(model.variables) + list(model.optimizer.variables)]


def _max_difference(a, b):
  assert [x.shape for x in a] == [y.shape for y in b]
  return max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
             for x, y in zip(a, b))


@pytest.fixture(scope="module")
def reference():
  model = _model(0)
  history = _fit(model)
  return {"state": _state(model), "nll": history["nll"], "model": model}


def _interrupted(backup_dir, save_freq, epoch, step):
  with pytest.raises(KeyboardInterrupt, match="preempted"):
    _fit(_model(0), callbacks.BackupAndRestore(backup_dir, save_freq=save_freq),
         _Interrupt(epoch, step))


@pytest.fixture(scope="module")
def mid_epoch_backup(tmp_path_factory):
  """The backup of a run preempted after step 6 (0-based 5) of epoch 1, save_freq=3."""
  backup_dir = tmp_path_factory.mktemp("interrupted") / "backup"
  _interrupted(backup_dir, 3, 1, 5)
  return backup_dir


def _copy(backup_dir, tmp_path):
  return shutil.copytree(backup_dir, tmp_path / "backup")


@pytest.mark.parametrize("save_freq,step,resume_epoch,done_steps", [
    # Backups after steps 3, 6 (epoch 0), 1, 4 (epoch 1); preempted after step 6 of
    # epoch 1 (0-based 5), so steps 5 and 6 are lost and redone.
    (3, 5, 1, 4),
    # Backups at epoch ends; preempted mid epoch 1, which is redone from its start.
    ("epoch", 5, 1, 0),
])
def test_resumed_fit_ends_with_the_uninterrupted_weights(tmp_path, reference,
                                                         mid_epoch_backup, save_freq,
                                                         step, resume_epoch, done_steps):
  if save_freq == 3:
    backup_dir = _copy(mid_epoch_backup, tmp_path)
  else:
    backup_dir = tmp_path / "backup"
    _interrupted(backup_dir, save_freq, 1, step)
  with np.load(backup_dir / "training_state.npz") as saved:
    assert (int(saved["epoch"]), int(saved["steps"])) == (resume_epoch, done_steps)

  resumed = _model(1)
  history = _fit(resumed, callbacks.BackupAndRestore(backup_dir, save_freq=save_freq))
  difference = _max_difference(_state(resumed), reference["state"])
  print(f"save_freq={save_freq}: max |resumed - uninterrupted| = {difference:.3g}")
  assert difference <= 1e-6
  # Only the missing steps ran: 24 in all, never an epoch's first steps twice.
  assert int(resumed.optimizer.iterations.numpy()) == EPOCHS * STEPS
  # The resumed epoch's logged NLL covers the whole epoch, as in the reference.
  np.testing.assert_allclose(history["nll"], reference["nll"][resume_epoch:], rtol=1e-6)
  # A completed fit deletes its backup and leaves no resume point behind.
  assert not (backup_dir / "training_state.npz").exists()
  assert len(resumed.fit(_data(), batch_size=BATCH, epochs=1, verbose=0)
             .history["nll"]) == 1


def test_random_generator_state_decides_the_weights(tmp_path, reference,
                                                    mid_epoch_backup):
  # Without the SeedGenerator states (what `model.save_weights`, and so Keras'
  # BackupAndRestore, leaves out) the same resume ends elsewhere: the equality above
  # is not a property of a model that ignores its random draws.
  backup_dir = _copy(mid_epoch_backup, tmp_path)
  resumed = _model(1)

  class _ForgetRandomState(keras.callbacks.Callback):
    """After the restore, puts every SeedGenerator back to a fresh state."""

    def on_train_begin(self, logs=None):
      for layer in resumed.flow_layers:
        if hasattr(layer, "seed_generator"):
          layer.seed_generator.state.assign(keras.random.SeedGenerator(0).state.value)

  backup = callbacks.BackupAndRestore(backup_dir, save_freq=3)
  history = resumed.fit(_data(), batch_size=BATCH, epochs=EPOCHS, shuffle=False,
                        verbose=0, initial_epoch=backup.initial_epoch,
                        callbacks=[backup, _ForgetRandomState()]).history
  assert len(history["nll"]) == 2
  weights = [keras.ops.convert_to_numpy(v) for v in resumed.trainable_variables]
  reference_weights = [keras.ops.convert_to_numpy(v)
                       for v in reference["model"].trainable_variables]
  assert _max_difference(weights, reference_weights) > 1e-4


def test_backup_of_another_model_is_rejected(tmp_path, mid_epoch_backup):
  backup_dir = _copy(mid_epoch_backup, tmp_path)
  keras.utils.set_random_seed(0)
  other = tff.FlowModel([tff.layers.Dequantize(num_bits=3, alpha=1e-3),
                         tff.layers.ResidualBlock(hidden_units=(4,))], [2])
  other.compile(optimizer="adam")
  with pytest.raises(ValueError, match="written by another model"):
    _fit(other, callbacks.BackupAndRestore(backup_dir, save_freq=3))


def test_keras_backup_and_restore_resumes_a_deterministic_flow_at_epoch_ends(tmp_path):
  # Keras' own callback needs a built model (a FlowModel is built when constructed).
  # It restores weights and optimizer at epoch ends, which is exact for a flow without
  # random draws in training.
  def model():
    keras.utils.set_random_seed(0)
    layers = [tff.layers.ActNorm(), tff.layers.AffineCoupling(hidden_units=(8,))]
    flow = tff.FlowModel(layers, [2])
    flow.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    return flow

  x = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
  fit = lambda m, extra: m.fit(x, batch_size=16, epochs=3, shuffle=False, verbose=0,
                               callbacks=extra)
  uninterrupted = model()
  fit(uninterrupted, [])
  with pytest.raises(KeyboardInterrupt):
    fit(model(), [keras.callbacks.BackupAndRestore(tmp_path), _Interrupt(2, 0)])
  resumed = model()
  history = fit(resumed, [keras.callbacks.BackupAndRestore(tmp_path)]).history
  assert len(history["nll"]) == 1
  assert _max_difference(_state(resumed), _state(uninterrupted)) <= 1e-6


def test_step_backups_also_at_epoch_ends(tmp_path, reference):
  # save_freq=3 over 8-step epochs with save_at_epoch_end: backups after steps 3 and 6
  # and at the end of epoch 0, where the count restarts. Preempted after step 2 of
  # epoch 1 (0-based 1): the backup is the end of epoch 0; with save_freq=3 alone it
  # would be step 1 of epoch 1 (the count carried over from epoch 0), and with
  # "epoch" the same end of epoch 0 but nothing within epochs.
  backup = lambda: callbacks.BackupAndRestore(tmp_path, save_freq=3, save_at_epoch_end=True)
  with pytest.raises(KeyboardInterrupt, match="preempted"):
    _fit(_model(0), backup(), _Interrupt(1, 1))
  with np.load(tmp_path / "training_state.npz") as saved:
    assert (int(saved["epoch"]), int(saved["steps"])) == (1, 0)
  resumed = _model(1)
  history = _fit(resumed, backup())
  assert _max_difference(_state(resumed), reference["state"]) <= 1e-6
  assert int(resumed.optimizer.iterations.numpy()) == EPOCHS * STEPS
  np.testing.assert_allclose(history["nll"], reference["nll"][1:], rtol=1e-6)


def test_fit_must_start_at_the_backups_epoch(tmp_path, mid_epoch_backup):
  # The backup resumes inside epoch 1; `initial_epoch` says so before fit, and a fit
  # that starts elsewhere is refused at its first epoch, before any step trains the
  # restored state again on epoch 0 (formerly the callback moved fit's start through
  # Keras' private Model._initial_epoch).
  assert callbacks.BackupAndRestore(tmp_path / "none").initial_epoch == 0
  backup = callbacks.BackupAndRestore(_copy(mid_epoch_backup, tmp_path), save_freq=3)
  assert backup.initial_epoch == 1
  resumed = _model(1)
  for start in (0, 2):
    with pytest.raises(ValueError, match=rf"resumes training at epoch 1 \(0-based\), but "
                                         rf"fit started at epoch {start}: pass "
                                         r"initial_epoch=backup.initial_epoch"):
      resumed.fit(_data(), batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                  initial_epoch=start, callbacks=[backup])
    assert int(resumed.optimizer.iterations.numpy()) == 12  # the backup's, no new step
  # The refused fits leave the backup and the wrapped train function usable.
  history = _fit(resumed, backup)
  assert len(history["nll"]) == 2
  assert int(resumed.optimizer.iterations.numpy()) == EPOCHS * STEPS


def test_flow_model_fit_starts_at_the_backups_epoch_by_itself(tmp_path, reference,
                                                              mid_epoch_backup):
  # FlowModel.fit fills in initial_epoch from the backup, so the one-line resume of
  # Keras' own callback (callbacks=[backup], no initial_epoch) works through public API.
  resumed = _model(1)
  history = resumed.fit(_data(), batch_size=BATCH, epochs=EPOCHS, shuffle=False,
                        verbose=0, callbacks=[callbacks.BackupAndRestore(
                            _copy(mid_epoch_backup, tmp_path), save_freq=3)]).history
  assert _max_difference(_state(resumed), reference["state"]) <= 1e-6
  assert int(resumed.optimizer.iterations.numpy()) == EPOCHS * STEPS
  np.testing.assert_allclose(history["nll"], reference["nll"][1:], rtol=1e-6)


@pytest.mark.parametrize("data,steps_per_execution", [
    ("arrays", 1),   # 4 batches a pass: epochs 2 and 3 start a second pass
    ("arrays", 2),
    ("repeated dataset", 1)])
def test_resume_with_steps_per_epoch_continues_the_stream(tmp_path, data,
                                                          steps_per_execution):
  # With steps_per_epoch, Keras' epoch e starts where epoch e - 1 stopped; the resumed
  # run trained epoch 2 (mid-epoch, epoch 3) on the first batches of the data again.
  rows = _data()[:4 * BATCH]
  if data == "arrays":
    make_data = lambda: {"x": rows, "batch_size": BATCH, "shuffle": False}  # pylint: disable=unnecessary-lambda-assignment
  else:
    make_data = lambda: {"x": tf.data.Dataset.from_tensor_slices(rows).batch(BATCH).repeat()}  # pylint: disable=unnecessary-lambda-assignment

  def fit(model, **kwargs):
    arguments = make_data()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False,
                  steps_per_execution=steps_per_execution)
    callbacks_given = [c for c in kwargs.values() if c is not None]
    return model.fit(arguments.pop("x"), epochs=4, steps_per_epoch=2, verbose=0,
                     callbacks=callbacks_given, **arguments).history

  uninterrupted = _model(0)
  reference_nll = fit(uninterrupted)["nll"]
  last = steps_per_execution - 1  # the batch index Keras reports after an execution
  for save_freq, epoch, step in (("epoch", 2, last), (1, 2, last), (1, 3, last)):
    backup_dir = tmp_path / f"{save_freq}_{epoch}_{step}"
    with pytest.raises(KeyboardInterrupt, match="preempted"):
      fit(_model(0), backup=callbacks.BackupAndRestore(backup_dir, save_freq=save_freq),
          interrupt=_Interrupt(epoch, step))
    resumed = _model(1)
    nll = fit(resumed, backup=callbacks.BackupAndRestore(backup_dir, save_freq=save_freq))
    assert _max_difference(_state(resumed), _state(uninterrupted)) == 0
    np.testing.assert_array_equal(nll["nll"], reference_nll[-len(nll["nll"]):])


def test_a_stream_that_cannot_resume_exactly_is_named_in_a_warning(tmp_path):
  # 5 batches a pass, 2 an epoch: Keras ends the third epoch early and restarts the
  # pass, which a resumed run cannot follow.
  model = _model(0)
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
  with pytest.warns(UserWarning, match="5 batches per pass, 2 per epoch"):
    model.fit(_data()[:5 * BATCH], batch_size=BATCH, shuffle=False, epochs=1,
              steps_per_epoch=2, verbose=0,
              callbacks=[callbacks.BackupAndRestore(tmp_path / "backup")])


@pytest.mark.parametrize("save_freq", [0, -2, "batch", 2.5])
def test_bad_save_freq_is_rejected(tmp_path, save_freq):
  with pytest.raises(ValueError, match="save_freq must be"):
    callbacks.BackupAndRestore(tmp_path, save_freq=save_freq)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
