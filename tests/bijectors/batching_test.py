"""Conditional bijectors on any sample shape pair each point with its own context row."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
from tfp_flows.bijectors import conditioning

tfd = tfp.distributions


def test_a_context_of_another_sample_shape_is_an_error_not_paired_with_other_points():
  # x [2, 3, d] and a context [3, 2, c] were both flattened to 6 rows and paired
  # row by row: numbers, where FlowModel.log_prob raises on the same inputs.
  keras.utils.set_random_seed(0)
  model = tff.models.NeuralSplineFlow(3, num_layers=2, hidden_units=(8,), context_dims=2)
  distribution = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(3)),
                                             model.bijector)
  x = np.random.default_rng(0).normal(size=(2, 3, 3)).astype("float32")
  context = np.random.default_rng(1).normal(size=(2, 3, 2)).astype("float32")

  def log_prob(context):
    return distribution.log_prob(x, bijector_kwargs=conditioning.conditional_kwargs(
        model.bijector, tf.constant(context))).numpy()

  np.testing.assert_allclose(log_prob(context), model.log_prob(x, context=context).numpy(),
                             rtol=1e-5)
  with pytest.raises(ValueError, match=r"for points of sample shape \[2, 3\] a context "
                     r"of shape \[2, 3, \*context_shape\]; got a context of shape "
                     r"\[3, 2, 2\]"):
    log_prob(context.reshape(3, 2, 2))


@pytest.mark.parametrize("autoregressive", [False, True])
def test_one_context_row_for_a_batch_of_points_is_an_error(autoregressive):
  # Through bijector_kwargs, the autoregressive flow broadcast one row over the batch
  # and the coupling failed inside its network (ConcatOp); FlowModel.log_prob raises.
  keras.utils.set_random_seed(0)
  model = tff.models.NeuralSplineFlow(3, num_layers=2, hidden_units=(8,), context_dims=1,
                                      autoregressive=autoregressive)
  distribution = model.distribution
  x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
  for rows in (1, 3):
    kwargs = conditioning.conditional_kwargs(model.bijector, tf.ones([rows, 1]))
    with pytest.raises(ValueError, match=r"for points of sample shape \[5\] a context of "
                       rf"shape \[5, \*context_shape\]; got a context of shape \[{rows}, 1\]"):
      distribution.log_prob(x, bijector_kwargs=kwargs)
  context = np.linspace(-1.0, 1.0, 5, dtype="float32")[:, None]
  kwargs = conditioning.conditional_kwargs(model.bijector, tf.constant(context))
  np.testing.assert_allclose(distribution.log_prob(x, bijector_kwargs=kwargs).numpy(),
                             model.log_prob(x, context=context).numpy(), rtol=1e-5)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
