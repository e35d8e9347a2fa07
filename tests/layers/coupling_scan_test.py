"""tfp_flows.layers.CouplingScan and its bijector: the unrolled chain it stands for, XLA, errors.

The reference is the `NeuralSplineFlow` preset with `linear="permute"` unrolled into
L `[Permute, SplineCoupling]` layers of stock `tfb.Chain`, given the same weights block
by block: log-densities, samples and gradients must agree to float32 round-off, eagerly
and under XLA, and training both with `fit` must keep them together.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_flows as tff
from tests.testing import flow_helpers

tfb = tfp.bijectors
SMALL = {"num_blocks": 4, "num_bins": 4, "hidden_units": (16,), "linear": "permute",
         "actnorm": False}


pytestmark = pytest.mark.usefixtures("keras_seed")


def _pair(context_dims=None, dtype=None):
  """The unrolled preset with perturbed weights, and the scanned one given the same."""
  unrolled = tff.models.NeuralSplineFlow(event_shape=[5], context_dims=context_dims,
                                         dtype=dtype, **SMALL)
  flow_helpers.perturb_weights(unrolled, scale=0.3)
  scanned = tff.models.NeuralSplineFlow(event_shape=[5], context_dims=context_dims,
                                        scan_blocks=True, dtype=dtype, **SMALL)
  _copy_block_weights(unrolled, scanned)
  return unrolled, scanned


def _copy_block_weights(unrolled, scanned):
  couplings = [l for l in unrolled.flow_layers if isinstance(l, tff.layers.SplineCoupling)]
  (scan,) = scanned.flow_layers
  for i, weight in enumerate(scan.trainable_weights):
    weight.assign(np.stack([keras.ops.convert_to_numpy(c.trainable_weights[i])
                            for c in couplings]))


def _stacked_gradients(unrolled, gradients):
  """The unrolled model's gradients arranged as the scanned model's stacked weights."""
  couplings = [l for l in unrolled.flow_layers if isinstance(l, tff.layers.SplineCoupling)]
  by_weight = {id(w): g for w, g in zip(unrolled.trainable_variables, gradients)}
  return [np.stack([by_weight[id(c.trainable_variables[i])].numpy() for c in couplings])
          for i in range(len(couplings[0].trainable_variables))]


@pytest.mark.parametrize("context_dims", [None, 2])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_the_scan_is_the_unrolled_chain(context_dims, jit_compile):
  unrolled, scanned = _pair(context_dims)
  assert [type(l).__name__ for l in scanned.flow_layers] == ["CouplingScan"]
  assert len(scanned.trainable_variables) == 2
  assert len(scanned.distribution.trainable_variables) == 2
  rng = np.random.default_rng(1)
  x = tf.constant(rng.uniform(-2, 2, size=[7, 5]), tf.float32)
  context = None if context_dims is None else tf.constant(rng.normal(size=[7, 2]), tf.float32)

  def log_prob_and_gradients(model):
    with tf.GradientTape() as tape:
      log_prob = model.log_prob(x, context=context)
      loss = -tf.reduce_mean(log_prob)
    return log_prob, tape.gradient(loss, model.trainable_variables)

  scanned_log_prob, scanned_gradients = tf.function(
      lambda: log_prob_and_gradients(scanned), jit_compile=jit_compile)()
  log_prob, gradients = log_prob_and_gradients(unrolled)
  np.testing.assert_allclose(scanned_log_prob.numpy(), log_prob.numpy(), rtol=1e-5,
                             atol=1e-5)
  # Float32 round-off of sums of many terms, which XLA orders its own way: to 1e-4 of
  # the largest gradient entry (measured: 1.4e-5 of it).
  for got, want in zip(scanned_gradients, _stacked_gradients(unrolled, gradients)):
    scale = np.abs(want).max()
    assert scale > 0.01
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4 * scale)

  row = None if context is None else context[0]
  sample = tf.function(lambda: scanned.sample(6, seed=3, context=row),
                       jit_compile=jit_compile)()
  np.testing.assert_allclose(sample.numpy(), unrolled.sample(6, seed=3, context=row).numpy(),
                             rtol=1e-5, atol=1e-5)


def test_blocks_start_from_independent_glorot_draws():
  # An initializer instance called once per block drew the same kernels for every block.
  layer = tff.models.NeuralSplineFlow(event_shape=[40], num_blocks=4, hidden_units=(64, 64),
                                      linear="permute", actnorm=False,
                                      scan_blocks=True).flow_layers[0]
  first, second, last = (keras.ops.convert_to_numpy(w) for w in layer.trainable_weights)
  for weight, fan_in in ((first, 20), (second, 64)):
    kernels, biases = weight[:, :-1], weight[:, -1]
    assert not np.any(biases)
    for i in range(4):
      for j in range(i):
        assert np.abs(kernels[i] - kernels[j]).max() > 0.1
    # U(-l, l) with l = sqrt(6 / (fan_in + 64)): standard deviation l / sqrt(3), to 5%.
    np.testing.assert_allclose(kernels.std(), np.sqrt(2.0 / (fan_in + 64)), rtol=0.05)
  assert not np.any(last)


def test_fit_under_xla_trains_the_scan_as_the_unrolled_chain():
  unrolled, scanned = _pair()
  x = np.random.default_rng(2).normal(size=[64, 5]).astype("float32")
  for model in (unrolled, scanned):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
  first = unrolled.fit(x, batch_size=16, epochs=3, shuffle=False, verbose=0).history["nll"]
  second = scanned.fit(x, batch_size=16, epochs=3, shuffle=False, verbose=0).history["nll"]
  assert first[-1] < first[0] - 0.1
  np.testing.assert_allclose(second, first, rtol=1e-4)
  np.testing.assert_allclose(scanned.log_prob(x).numpy(), unrolled.log_prob(x).numpy(),
                             rtol=1e-3, atol=1e-3)


def test_log_det_is_the_autodiff_jacobian_in_float64():
  _, scanned = _pair(dtype="float64")
  bijector = scanned.flow_layers[0].bijector
  z = tf.constant(np.random.default_rng(3).uniform(-2, 2, size=[4, 5]))
  with tf.GradientTape() as tape:
    tape.watch(z)
    x = bijector.forward(z)
  jacobian = tape.batch_jacobian(x, z).numpy()
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(z, event_ndims=1).numpy(),
                             np.linalg.slogdet(jacobian)[1], rtol=1e-10, atol=1e-10)
  assert np.all(np.abs(jacobian) > 1e-12)  # every coordinate moved by every other
  np.testing.assert_allclose(bijector.inverse(x).numpy(), z.numpy(), atol=1e-10)
  # Any sample shape: [2, 2] points go through as the flat batch of 4.
  grid = tf.reshape(z, [2, 2, 5])
  np.testing.assert_allclose(bijector.forward(grid).numpy().reshape(4, 5), x.numpy(),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(
      bijector.inverse_log_det_jacobian(bijector.forward(grid), event_ndims=1).numpy(),
      -bijector.forward_log_det_jacobian(grid, event_ndims=1).numpy(), rtol=1e-10)


def test_composes_with_stock_tfp():
  _, scanned = _pair()
  layer = scanned.flow_layers[0]
  distribution = tfp.distributions.TransformedDistribution(
      tfp.distributions.Sample(tfp.distributions.Normal(0.0, 1.0), [5]),
      tfb.Chain([tfb.Shift(1.0), layer.bijector]))
  x = tf.constant(np.random.default_rng(4).normal(size=[6, 5]), tf.float32)
  np.testing.assert_allclose(distribution.log_prob(x + 1.0).numpy(),
                             scanned.log_prob(x).numpy(), rtol=1e-5, atol=1e-5)


def test_argument_errors():
  with pytest.raises(ValueError, match="num_blocks must be an integer >= 1"):
    tff.layers.CouplingScan(0)
  with pytest.raises(ValueError, match="vectors \\[N, D\\] with D >= 2"):
    tff.FlowModel([tff.layers.CouplingScan(2)], event_shape=[1])
  for arguments in ({"linear": "lu"}, {"linear": "permute", "autoregressive": True}):
    with pytest.raises(ValueError, match="pass linear='permute' and autoregressive=False"):
      tff.models.NeuralSplineFlow(event_shape=[4], scan_blocks=True, **arguments)
  with pytest.raises(ValueError, match="conditioner_layout must be 'stacked'"):
    tff.models.NeuralSplineFlow(event_shape=[4], linear="permute", scan_blocks=True,
                                conditioner_layout="dense")
  transformer = tff.bijectors.RationalQuadraticTransformer()
  with pytest.raises(ValueError, match="num_channels must be an integer >= 2"):
    tff.bijectors.CouplingScan(lambda x, w: x, transformer, 1, lambda: [], 2)
  with pytest.raises(ValueError, match="block_weights must be a callable"):
    tff.bijectors.CouplingScan(lambda x, w: x, transformer, 4, [], 2)
  with pytest.raises(ValueError, match="must return 2 x 23 = 46 values"):
    tff.bijectors.CouplingScan(lambda x, w: tf.zeros([1, 45]), transformer, 4,
                               lambda: [tf.zeros([2, 1])], 2).forward(tf.zeros([1, 4]))
  bijector = tff.bijectors.CouplingScan(lambda x, w: x, transformer, 4,
                                        lambda: [tf.zeros([3, 2, 2])], 2)
  with pytest.raises(ValueError, match="num_blocks = 2 entries on their leading axis"):
    bijector.forward(tf.zeros([1, 4]))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_wrong_event_size_known_only_at_run_time_is_an_error(jit_compile):
  _, scanned = _pair()
  log_prob = tf.function(scanned.distribution.log_prob, jit_compile=jit_compile,
                         input_signature=[tf.TensorSpec([None, None])])
  assert log_prob(tf.zeros([3, 5])).shape == [3]
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
    log_prob(tf.zeros([3, 4]))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_two_dimensions_with_a_batch_size_unknown_when_tracing(jit_compile):
  # With one moved entry the spline returned a [None, None] block output, which the loop
  # rejected against the [None, 2] it was entered with: fit and export failed at D = 2.
  model = tff.models.NeuralSplineFlow(event_shape=[2], num_blocks=2, num_bins=4,
                                      hidden_units=(8,), linear="permute", actnorm=False,
                                      scan_blocks=True)
  flow_helpers.perturb_weights(model, scale=0.3)
  x = np.random.default_rng(5).normal(size=[32, 2]).astype("float32")
  log_prob = tf.function(model.log_prob, jit_compile=jit_compile,
                         input_signature=[tf.TensorSpec([None, 2])])
  np.testing.assert_allclose(log_prob(x).numpy(), model.log_prob(x).numpy(), rtol=1e-5,
                             atol=1e-5)
  sample = tf.function(lambda n: model.sample(n, seed=4), jit_compile=False)
  assert sample(tf.constant(3)).shape == [3, 2]
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
  history = model.fit(x, batch_size=8, epochs=2, verbose=0).history["nll"]
  assert history[1] < history[0]
