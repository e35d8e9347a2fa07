"""A steps_per_execution block runs as one XLA loop, with the same numbers as Keras' loop.

`FlowModel.make_train_function` runs the k steps of an execution as one
`tf.while_loop` in one XLA computation (`tfp_flows.compiled_loop`; benchmarks/RESULTS.md:
VI `fit` 0.38x -> 1.42x the stock TFP loop), for data-free objectives (`ReverseKL`) and
for data alike. The reference for every number is Keras' own loop: the same model
trained one step per call.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
from tfp_flows import compiled_loop

tfd = tfp.distributions
TARGET = tfd.MultivariateNormalDiag([1.0, -1.0], [1.0, 2.0])


def _model(target_log_prob=TARGET.log_prob):
  keras.utils.set_random_seed(0)
  return tff.FlowModel(
      [tff.layers.AffineCoupling(hidden_units=(8,)),
       tff.layers.AffineCoupling(hidden_units=(8,), reverse=True)], [2],
      objective=tff.objectives.ReverseKL(target_log_prob, num_samples=16, seed=3))


def _count_steps(model):
  """Counts the steps run inside a block's XLA loop and those run one per call.

  Where a step is traced (inside `compiled_loop`'s `run_block` function or not) fixes
  which counter its executions add to.
  """
  in_block, single = tf.Variable(0), tf.Variable(0)
  train_step = model.train_step

  def counted(data):
    graph, names = tf.compat.v1.get_default_graph(), []
    while graph is not None:
      names.append(getattr(graph, "name", ""))
      graph = getattr(graph, "outer_graph", None)
    (in_block if any("run_block" in name for name in names) else single).assign_add(1)
    return train_step(data)
  model.train_step = counted
  return in_block, single


def _step_counts(model):
  return [int(count) for count in model.step_counts]


def _fit(steps_per_execution, jit_compile=True, steps_per_epoch=20, epochs=2,
         callbacks=None):
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile,
                steps_per_execution=steps_per_execution)
  model.step_counts = _count_steps(model)
  history = model.fit(epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
                      callbacks=callbacks)
  return model, history.history


def test_block_of_steps_equals_one_step_per_call():
  reference, reference_logs = _fit(1)
  model, logs = _fit(10)
  assert set(logs) == set(reference_logs) == {
      "loss", "loss_max", "elbo", "ess_fraction", "log_normalizer"}
  for name in logs:
    np.testing.assert_allclose(logs[name], reference_logs[name], rtol=1e-6, atol=1e-7)
  for weight, expected in zip(model.trainable_weights, reference.trainable_weights):
    np.testing.assert_allclose(weight.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
  assert int(model.optimizer.iterations) == int(reference.optimizer.iterations) == 40
  assert _step_counts(model) == [40, 0] and _step_counts(reference) == [0, 40]


def test_partial_last_block_runs_whole_blocks_as_keras_does():
  # 25 steps in blocks of 10: Keras runs three whole blocks (30 steps) per epoch, in
  # graph mode (its own loop) and in the XLA loop alike.
  keras_loop, _ = _fit(10, jit_compile=False, steps_per_epoch=25, epochs=1)
  xla_loop, _ = _fit(10, steps_per_epoch=25, epochs=1)
  assert int(keras_loop.optimizer.iterations) == int(xla_loop.optimizer.iterations) == 30


def test_callbacks_see_one_batch_end_per_execution():
  ends = []
  callback = keras.callbacks.LambdaCallback(
      on_train_batch_end=lambda batch, logs: ends.append((batch, float(logs["loss"]))))
  _fit(5, steps_per_epoch=10, epochs=1, callbacks=[callback])
  assert [batch for batch, _ in ends] == [4, 9]
  assert all(np.isfinite(loss) for _, loss in ends)


def test_non_finite_step_inside_the_loop_stops_fit_and_is_not_applied():
  model = _model(lambda theta: tf.fill(tf.shape(theta)[:-1], np.float32(np.nan)))
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True,
                steps_per_execution=4)
  before = [w.numpy().copy() for w in model.trainable_weights]
  with pytest.raises(FloatingPointError, match="training step 1 "):
    model.fit(epochs=1, steps_per_epoch=8, verbose=0)
  for weight, old in zip(model.trainable_weights, before):
    np.testing.assert_array_equal(weight.numpy(), old)


def test_train_on_batch_keeps_keras_path():
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True,
                steps_per_execution=3)
  logs = model.train_on_batch(np.zeros([1, 1], np.float32), return_dict=True)
  assert np.isfinite(logs["loss"]) and int(model.optimizer.iterations) == 1


def _data_model(context=False):
  keras.utils.set_random_seed(0)
  return tff.FlowModel(
      [tff.layers.ActNorm(), tff.layers.AffineCoupling(hidden_units=(8,)),
       tff.layers.AffineCoupling(hidden_units=(8,), reverse=True)], [2],
      context_shape=[1] if context else None)


def _fit_data(data, steps_per_execution, epochs=2, **fit_kwargs):
  model = _data_model(context="y" in fit_kwargs)
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True,
                steps_per_execution=steps_per_execution)
  model.step_counts = _count_steps(model)
  history = model.fit(data, epochs=epochs, shuffle=False, verbose=0, **fit_kwargs)
  return model, history.history


def _assert_same_training(model, logs, reference, reference_logs):
  assert set(logs) == set(reference_logs) == {"loss", "loss_max", "nll"}
  for name in logs:
    np.testing.assert_allclose(logs[name], reference_logs[name], rtol=1e-6, atol=1e-7)
  for weight, expected in zip(model.weights, reference.weights):
    np.testing.assert_allclose(weight.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7,
                               err_msg=weight.path)
  assert int(model.optimizer.iterations) == int(reference.optimizer.iterations)


X = np.random.default_rng(0).normal(size=[25 * 16 + 5, 2]).astype(np.float32) * [1.0, 3.0]


def test_data_block_equals_keras_loop_with_a_smaller_last_batch():
  # 26 batches an epoch, the last of 5 rows; blocks of 10: two whole blocks in the XLA
  # loop, then 5 full batches in it and the small one as its own step. ActNorm
  # initialises from the first batch inside the loop.
  reference, reference_logs = _fit_data(X, 1, batch_size=16)
  model, logs = _fit_data(X, 10, batch_size=16)
  _assert_same_training(model, logs, reference, reference_logs)
  assert _step_counts(model) == [50, 2]


def test_uniform_batches_never_take_the_single_step():
  model, _ = _fit_data(X[:25 * 16], 10, batch_size=16)
  assert _step_counts(model) == [50, 0]


def test_a_batch_shaped_differently_mid_block_keeps_the_order():
  sizes = [16, 16, 7, 16, 16, 16, 3, 16]
  starts = np.cumsum([0] + sizes)
  def dataset():
    return tf.data.Dataset.from_generator(
        lambda: (X[a:b] for a, b in zip(starts[:-1], starts[1:])),
        output_signature=tf.TensorSpec([None, 2], tf.float32))
  reference, reference_logs = _fit_data(dataset(), 1)
  model, logs = _fit_data(dataset(), 4)
  _assert_same_training(model, logs, reference, reference_logs)
  # Blocks [16 16 7 16] [16 16 3 16]: in each, a loop over the first two, the odd
  # batch alone, then a loop over the last.
  assert _step_counts(model) == [2 * 2 * 3, 2 * 2 * 1]


def test_context_batches_equal_keras_loop():
  context = np.arange(len(X), dtype=np.float32)[:, None] / len(X)
  reference, reference_logs = _fit_data(X, 1, y=context, batch_size=16)
  model, logs = _fit_data(X, 10, y=context, batch_size=16)
  _assert_same_training(model, logs, reference, reference_logs)
  assert _step_counts(model) == [50, 2]


def test_block_larger_than_the_buffer_runs_as_loops_that_fit(monkeypatch):
  # 10 batches of 16 float32 pairs are 1,280 bytes: over a 1,000-byte buffer, which
  # holds 7 of them.
  monkeypatch.setattr(compiled_loop, "BUFFER_BYTES", 1000)
  reference, reference_logs = _fit_data(X, 1, batch_size=16)
  model, logs = _fit_data(X, 10, batch_size=16)
  _assert_same_training(model, logs, reference, reference_logs)
  assert _step_counts(model) == [50, 2]


def test_a_step_with_convolutions_keeps_keras_loop():
  # XLA's CPU backend runs a loop body's convolutions off its fast kernels, so a Glow
  # step keeps Keras' loop, with Keras' numbers.
  keras.utils.set_random_seed(0)
  model = tff.FlowModel([tff.layers.Squeeze(2), tff.layers.GlowStep(hidden_channels=4)],
                        [4, 4, 1])
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True,
                steps_per_execution=3)
  counts = _count_steps(model)
  images = np.random.default_rng(0).normal(size=[6 * 8, 4, 4, 1]).astype(np.float32)
  model.fit(images, batch_size=8, epochs=1, shuffle=False, verbose=0)
  assert [int(count) for count in counts] == [0, 6]


def test_non_finite_batch_inside_a_data_block_stops_fit():
  data = X.copy()
  data[16 * 3 + 2, 0] = np.nan   # in the fourth batch of the first block
  model = _data_model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True,
                steps_per_execution=10)
  with pytest.raises(FloatingPointError, match="training step 4 "):
    model.fit(data, batch_size=16, epochs=1, shuffle=False, verbose=0)
  assert all(np.isfinite(w.numpy()).all() for w in model.weights)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
