"""A data-free objective's steps_per_execution block runs as one XLA loop, unchanged.

`FlowModel.make_train_function` runs the k steps of an execution of `ReverseKL` as one
`tf.while_loop` in one XLA computation (benchmarks/RESULTS.md: VI `fit` 0.38x -> ~2x
the stock TFP loop). The reference for every number is Keras' own loop: the same
model trained one step per call.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff

tfd = tfp.distributions
TARGET = tfd.MultivariateNormalDiag([1.0, -1.0], [1.0, 2.0])


def _model(target_log_prob=TARGET.log_prob):
  keras.utils.set_random_seed(0)
  return tff.FlowModel(
      [tff.layers.AffineCoupling(hidden_units=(8,)),
       tff.layers.AffineCoupling(hidden_units=(8,), reverse=True)], [2],
      objective=tff.objectives.ReverseKL(target_log_prob, num_samples=16, seed=3))


def _fit(steps_per_execution, jit_compile=True, steps_per_epoch=20, epochs=2,
         callbacks=None):
  model = _model()
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile,
                steps_per_execution=steps_per_execution)
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


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
