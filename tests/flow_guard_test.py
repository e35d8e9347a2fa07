"""A non-finite batch never reaches the weights: the step is skipped and `fit` raises.

A NaN or inf anywhere in a batch makes its loss and gradients NaN. FlowModel's train
step then applies nothing (weights and optimizer state stay bit for bit what they were
after the previous step) and `fit` stops with an error naming the step. Checked
eagerly, in graph mode, under XLA, and under MirroredStrategy over two logical CPUs
(in a subprocess: logical devices must be set before TensorFlow starts), where the
replicas must agree to skip the step although only one of them saw the bad row.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

BATCH = 8


def _model():
  keras.utils.set_random_seed(0)
  return tff.FlowModel([tff.layers.ActNorm(),
                        tff.layers.AffineCoupling(hidden_units=(8,)),
                        tff.layers.AffineCoupling(hidden_units=(8,), reverse=True)], [2])


def _state(model):
  return [keras.ops.convert_to_numpy(v).copy()
          for v in list(model.variables) + list(model.optimizer.variables)]


class _Snapshot(keras.callbacks.Callback):
  """Keeps the training state after every step."""

  def __init__(self):
    super().__init__()
    self.states = []

  def on_train_batch_end(self, batch, logs=None):
    self.states.append(_state(self.model))


def _with_an_empty_third_batch(x):
  """`x` in batches of BATCH rows, with a batch of no rows after the first 16 rows."""
  return (tf.data.Dataset.from_tensor_slices(x[:16]).batch(BATCH)
          .concatenate(tf.data.Dataset.from_tensors(x[:0]))
          .concatenate(tf.data.Dataset.from_tensor_slices(x[16:]).batch(BATCH)))


def _data(bad_row, value):
  x = np.random.default_rng(0).normal(size=(4 * BATCH, 2)).astype("float32")
  x[bad_row, 1] = value
  return x


@pytest.mark.parametrize("mode, value", [("eager", np.nan), ("graph", np.inf),
                                         ("xla", np.nan), ("xla", -np.inf)])
def test_a_non_finite_batch_is_not_applied_and_fit_stops(mode, value):
  # Batches of 8 rows; row 21 is in the third batch of the first epoch (step 3).
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=mode == "eager",
                jit_compile=mode == "xla")
  snapshot = _Snapshot()
  with pytest.raises(FloatingPointError,
                     match=r"non-finite loss or gradient at training step 3 \(epoch 1, "
                           r"batch 3\): check the data for NaN/inf"):
    model.fit(_data(21, value), batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[snapshot])
  # The error is raised after the bad step, before any callback after it runs.
  assert len(snapshot.states) == 2
  after = _state(model)
  assert int(model.optimizer.iterations.numpy()) == 2
  for before, now in zip(snapshot.states[-1], after):
    np.testing.assert_array_equal(now, before)
  assert all(np.all(np.isfinite(v)) for v in after)
  # Training goes on from there once the data are fixed: the guard resets per fit.
  history = model.fit(_data(21, 0.0), batch_size=BATCH, epochs=1, shuffle=False,
                      verbose=0).history
  assert np.isfinite(history["loss"][0])
  assert int(model.optimizer.iterations.numpy()) == 6


@pytest.mark.parametrize("jit_compile", [False, True])
def test_flow_matching_with_optimal_transport_reports_a_nan_row_too(jit_compile):
  # The NaN row made every Sinkhorn logit NaN, and the partner draw's out-of-range
  # index failed a gather (graph mode) before the guard could name the step.
  x = _data(3, np.nan)
  keras.utils.set_random_seed(0)
  model = tff.models.FFJORDFlow([2], hidden_units=(8,), training="flow_matching",
                                optimal_transport=True)
  model.compile(jit_compile=jit_compile)
  with pytest.raises(FloatingPointError,
                     match=r"at training step 1 \(epoch 1, batch 1\): check the data"):
    model.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def test_under_xla_the_error_names_inputs_outside_their_range_too():
  # Pixels scaled to [0, 1]: eagerly Dequantize says so; under XLA the rows become NaN
  # and the error pointed at NaN data or the learning rate only.
  x = np.random.default_rng(0).integers(0, 8, size=(16, 4, 4, 1))
  model = tff.models.Glow([4, 4, 1], num_scales=1, steps_per_scale=1, hidden_channels=8,
                          num_bits=3)
  model.compile(jit_compile=True)
  with pytest.raises(FloatingPointError, match=r"check the data for NaN/inf, and under "
                     r"XLA .* pixels that are not the raw integers in \[0, 2\*\*num_bits\)"):
    model.fit(x / 7.0, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_an_empty_batch_is_named_as_such_not_as_nan_data(jit_compile):
  # A dataset whose third batch has no rows: the loss over it is NaN, and the error
  # said "check the data for NaN/inf" of finite data.
  x = _data(0, 0.0)
  batches = _with_an_empty_third_batch(x)
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
  snapshot = _Snapshot()
  with pytest.raises(FloatingPointError,
                     match=r"training step 3 \(epoch 1, batch 3\) had no rows to train on"):
    model.fit(batches, epochs=1, verbose=0, callbacks=[snapshot])
  for before, now in zip(snapshot.states[-1], _state(model)):
    np.testing.assert_array_equal(now, before)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_evaluate_skips_an_empty_batch_instead_of_returning_nan(jit_compile):
  # The loss over no rows is NaN; weighted by its zero rows it still made the epoch's
  # mean NaN (0 * NaN). As under a strategy whose last batch leaves a replica no rows.
  x = _data(0, 0.0)
  batches = _with_an_empty_third_batch(x)
  model = _model()
  model.compile(jit_compile=jit_compile)
  expected = -np.mean(keras.ops.convert_to_numpy(model.log_prob(x)))
  logs = model.evaluate(batches, verbose=0, return_dict=True)
  assert sorted(logs) == ["loss", "nll"]
  for value in logs.values():
    np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_steps_after_a_non_finite_one_in_the_same_execution_are_not_applied(jit_compile):
  # steps_per_execution=3: steps 1-3 run as one execution; the NaN is in step 2, so the
  # state must stay that after step 1 although step 3's batch is finite.
  reference = _model()
  reference.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
  reference.fit(_data(9, np.nan)[:BATCH], batch_size=BATCH, epochs=1, shuffle=False,
                verbose=0)
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile,
                steps_per_execution=3)
  with pytest.raises(FloatingPointError, match="at training step 2"):
    model.fit(_data(9, np.nan), batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
  assert int(model.optimizer.iterations.numpy()) == 1
  for expected, now in zip(_state(reference), _state(model)):
    np.testing.assert_array_equal(now, expected)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_a_non_finite_first_batch_leaves_act_norm_uninitialised(steps_per_execution):
  # ActNorm initialises from the first training batch; a NaN there must not become its
  # statistics, or every later (clean) fit would stay NaN. With 3 steps an execution,
  # the finite second batch must not initialise it either: the fit stops at step 1.
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2),
                steps_per_execution=steps_per_execution)
  model.optimizer.build(model.trainable_variables)
  initial = _state(model)
  with pytest.raises(FloatingPointError, match="at training step 1 "):
    model.fit(_data(2, np.nan), batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
  for before, now in zip(initial, _state(model)):
    np.testing.assert_array_equal(now, before)
  act_norm = model.flow_layers[0]
  assert float(act_norm.initialized.numpy()) == 0.0
  clean = _data(2, 0.0)
  # A clean fit's first batch initialises it: at learning rate 0, loc is its mean.
  model.compile(optimizer=keras.optimizers.SGD(0.0))
  model.fit(clean, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
  np.testing.assert_allclose(act_norm.loc.numpy(), clean[:BATCH].mean(0), rtol=1e-5)


@pytest.mark.parametrize("steps_per_execution", [1, 3, 5])
def test_a_bad_batch_in_a_last_partial_execution_is_named_right(steps_per_execution):
  # 4 batches in executions of 3 steps: Keras numbers the second, one-step execution as
  # if it had 3 steps, and the error named batch 5 (the skip count of a resumed fit).
  model = _model()
  model.compile(optimizer=keras.optimizers.SGD(1e-2), steps_per_execution=steps_per_execution)
  x = _data(3 * BATCH + 2, np.nan)
  with pytest.raises(FloatingPointError, match=r"at training step 4 \(epoch 1, batch 4\)"):
    model.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def test_a_later_epoch_names_its_batch():
  model = _model()
  model.compile(optimizer=keras.optimizers.SGD(1e-2))
  x = _data(0, 0.0)
  bad = x.copy()
  bad[BATCH + 3, 0] = np.nan
  model.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
  with pytest.raises(FloatingPointError, match=r"at training step 2 \(epoch 1, batch 2\)"):
    model.fit(bad, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
  with pytest.raises(FloatingPointError, match=r"at training step 6 \(epoch 2, batch 2\)"):
    # One pass over the 8 batches in 2 epochs of 4 steps: the bad batch is epoch 2's.
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate([x, bad])).batch(BATCH)
    model.fit(dataset, epochs=2, steps_per_epoch=4, shuffle=False, verbose=0)


def test_a_resumed_epoch_names_the_batch_counting_the_skipped_ones(tmp_path):
  # Interrupted after step 12 (epoch 2, batch 4 of 8) with a backup there; the resumed
  # fit skips epoch 2's first 4 batches, and its bad batch is epoch 2's 7th.
  class Interrupt(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      if int(self.model.optimizer.iterations.numpy()) >= 12:
        raise KeyboardInterrupt

  x = np.random.default_rng(0).normal(size=(8 * BATCH, 2)).astype("float32")
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  backup = str(tmp_path / "backup")
  with pytest.raises(KeyboardInterrupt):
    model.fit(x, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[
        tff.callbacks.BackupAndRestore(backup, save_freq=2), Interrupt()])
  bad = x.copy()
  bad[6 * BATCH + 3, 0] = np.nan
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  with pytest.raises(FloatingPointError, match=r"\(epoch 2, batch 7\)"):
    model.fit(bad, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
              callbacks=[tff.callbacks.BackupAndRestore(backup, save_freq=2)])


def test_train_on_batch_skips_and_raises_too():
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
  x = _data(3, np.nan)
  model.train_on_batch(x[BATCH:2 * BATCH])
  before = _state(model)
  with pytest.raises(FloatingPointError, match="at training step 1: check the data"):
    model.train_on_batch(x[:BATCH])
  for old, now in zip(before, _state(model)):
    np.testing.assert_array_equal(now, old)


_MIRRORED = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import tfp_flows as tff

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
      keras.utils.set_random_seed(0)
      model = tff.FlowModel([tff.layers.ActNorm(),
                             tff.layers.AffineCoupling(hidden_units=(8,))], [2])
      model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    x = np.random.default_rng(0).normal(size=(48, 2)).astype("float32")
    x[16 + 13, 0] = np.nan  # step 2, in the second replica's half of the batch
    states = []

    def state():
      values = []
      for v in list(model.variables) + list(model.optimizer.variables):
        copies = [np.array(c) for c in strategy.experimental_local_results(
            getattr(v, "value", v))]
        assert all(np.array_equal(copies[0], c) for c in copies[1:]), v.path
        values.append(copies[0])
      return values

    snapshot = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: states.append(state()))
    try:
      model.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0,
                callbacks=[snapshot])
    except FloatingPointError as error:
      assert "non-finite loss or gradient at training step 2 " in str(error), error
    else:
      raise AssertionError("fit did not raise")
    assert len(states) == 1 and int(model.optimizer.iterations.numpy()) == 1
    for before, now in zip(states[0], state()):
      np.testing.assert_array_equal(now, before)
    # 33 rows in batches of 16 end in a batch of one row: one replica would get none
    # and report NaN as a non-finite step. A clear error instead, before training. With
    # validation_split=0.5, 130 rows train as 65: batches of 64 and one row.
    clean = np.random.default_rng(1).normal(size=(130, 2)).astype("float32")
    for run in (lambda: model.fit(clean[:33], batch_size=16, verbose=0),
                lambda: model.fit(clean[:32], batch_size=16, verbose=0,
                                  validation_data=(clean[:33],)),
                lambda: model.fit(clean, batch_size=64, verbose=0, validation_split=0.5),
                lambda: model.evaluate(clean[:33], batch_size=16, verbose=0),
                # Glow's convolutions fail on a replica's empty batch with oneDNN's
                # "input depth must be evenly divisible by filter depth".
                lambda: model.predict(clean[:33], batch_size=16, verbose=0)):
      try:
        run()
      except ValueError as error:
        assert "end in a batch of 1 row(s), fewer than the 2 replicas" in str(error), error
      else:
        raise AssertionError("no error for a replica without rows")
    # A tf.data dataset is not checked up front: its 33 rows in batches of 16 end in a
    # batch of one row, and step 3 gives the second replica none. The error says so
    # (not "check the data for NaN"), and the step is not applied.
    batches = tf.data.Dataset.from_tensor_slices(clean[:33]).batch(16)
    states.clear()
    try:
      model.fit(batches, epochs=1, verbose=0, callbacks=[snapshot])
    except FloatingPointError as error:
      assert "training step 3 (epoch 1, batch 3) had no rows to train on" in str(error), error
    else:
      raise AssertionError("fit did not raise")
    for before, now in zip(states[1], state()):
      np.testing.assert_array_equal(now, before)
    # evaluate weighs each replica's mean by its rows: the empty shard adds nothing.
    expected = -np.mean(np.array(model.log_prob(clean[:33])))
    logs = model.evaluate(batches, verbose=0, return_dict=True)
    np.testing.assert_allclose([logs["loss"], logs["nll"]], expected, rtol=1e-5)
    print("GUARDED")
""")


def test_mirrored_strategy_skips_the_step_on_every_replica():
  # Graph mode: Keras' jit_compile=True under MirroredStrategy over logical CPUs fails
  # in TensorFlow itself (one XLA cluster reading variables of both devices).
  result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert "GUARDED" in result.stdout, result.stderr[-3000:]


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
