"""TFP's bijector properties for every layer's `.bijector` and for `model.distribution`.

Following TFP's `bijector_properties_test` (written here, not imported): for every case
of the layer contract test (every public layer, with perturbed weights so nothing is
the identity) the layer's bijector and the model's distribution must

* report a batch shape of `[]` (`experimental_batch_shape()`), as stock RealNVP, MAF
  and FFJORD do;
* hold the model's weights: `trainable_variables` are exactly the model's trainable
  weights, as the `tf.Variable`s a GradientTape watches, and gradients of `log_prob`
  and of reparameterised samples reach them;
* take any sample shape: one event (`td.sample()`, `log_prob(one_point)`, inside
  `tf.vectorized_map`) and two leading sample axes (`td.sample([S, N])`), with the
  same numbers as the batch of rows.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.layers import layer_contract_test as contract
from tfp_flows.bijectors import conditioning

tfd = tfp.distributions

CASES = {case.name: case for case in contract.CASES}


def _setup(name):
  case = CASES[name]
  keras.utils.set_random_seed(0)
  model = contract._model(case)  # pylint: disable=protected-access
  contract._perturb(model)  # pylint: disable=protected-access
  x, context = contract._data(case)  # pylint: disable=protected-access
  if case.discrete:
    x = x + 0.5  # the bin centre, where the model's density is the distribution's
  return case, model, tf.constant(x), None if context is None else tf.constant(context)


def _kwargs(model, context):
  if context is None:
    return {}
  return {"bijector_kwargs": conditioning.conditional_kwargs(model.bijector, context)}


def _refs(variables):
  return {v.ref() for v in variables}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_bijector_properties(name):
  case, model, x, context = _setup(name)
  _check_batch_shape_and_variables(case, model)
  _check_single_event_and_two_sample_axes(case, model, x, context)


def _check_batch_shape_and_variables(case, model):
  layer = model.flow_layers[0]
  for bijector in (layer.bijector, model.bijector):
    assert bijector.experimental_batch_shape() == tf.TensorShape([])
  distribution = model.distribution
  assert distribution.batch_shape == tf.TensorShape([])
  expected = [w.value for w in model.trainable_weights]
  assert len(expected) == case.num_trainable
  for holder in (layer.bijector, model.bijector, distribution):
    variables = holder.trainable_variables
    assert all(isinstance(v, tf.Variable) for v in variables)
    assert _refs(variables) == _refs(expected)


def _check_single_event_and_two_sample_axes(case, model, x, context):
  distribution = model.distribution
  # Dequantize: the model takes the integer pixels, the distribution the bin centres.
  pixels = x - 0.5 if case.discrete else x
  expected = model.log_prob(pixels, context=context).numpy()
  event_shape = case.event_shape
  # One point: a scalar log_prob equal to that row's.
  one = distribution.log_prob(x[0], **_kwargs(model, None if context is None
                                               else context[0])).numpy()
  assert one.shape == ()
  np.testing.assert_allclose(one, expected[0], rtol=1e-5, atol=1e-4)
  # Two sample axes [2, 3]: the rows in that shape.
  x23 = tf.reshape(x, [2, 3, *event_shape])
  c23 = None if context is None else tf.reshape(context, [2, 3, *context.shape[1:]])
  got = distribution.log_prob(x23, **_kwargs(model, c23)).numpy()
  np.testing.assert_allclose(got, expected.reshape(2, 3), rtol=1e-5, atol=1e-4)
  # tf.vectorized_map calls log_prob on single events.
  if context is None:
    mapped = tf.vectorized_map(distribution.log_prob, x).numpy()
    np.testing.assert_allclose(mapped, expected, rtol=1e-5, atol=1e-4)
  # Sampling: no sample shape, and [2, 3] (images included).
  sample_kwargs = _kwargs(model, None if context is None else context[0])
  assert distribution.sample(seed=(1, 2), **sample_kwargs).shape == event_shape
  sample_kwargs = _kwargs(model, c23)
  assert distribution.sample([2, 3], seed=(1, 2), **sample_kwargs).shape == [
      2, 3, *event_shape]
