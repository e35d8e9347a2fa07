"""tfp_flows.bijectors.TransformerAutoregressive (TarFlow's block) with a CausalTransformer."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.testing import bijector_checks
from tfp_flows import bijectors as tffb
from tfp_flows import nets
from tfp_flows.bijectors import conditioning

tfb = tfp.bijectors
tfd = tfp.distributions
IMAGE = [4, 4, 2]   # patch 2: T = 4 tokens of d = 8 numbers, D = 32
PATCH = 2


def _net(dtype, num_classes=None, scale=0.3, seed=0):
  """A tiny CausalTransformer with every weight moved off its initial value."""
  keras.utils.set_random_seed(seed)
  net = nets.CausalTransformer(4, 8, channels=8, num_layers=2, heads=2,
                               num_classes=num_classes, dtype=dtype.name)
  net.build((None, 4, 8))
  rng = np.random.default_rng(seed)
  for weight in net.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))
  return net


def _bijector(net, dtype, **kwargs):
  kwargs.setdefault("decoder", net)
  return tffb.TransformerAutoregressive(net, IMAGE, PATCH, dtype=dtype, **kwargs)


def _images(dtype, n=3, seed=1):
  return tf.constant(np.random.default_rng(seed).normal(size=[n, *IMAGE]), dtype)


@pytest.mark.parametrize("dtype,reverse", [(tf.float64, False), (tf.float64, True),
                                           (tf.float32, True)])
def test_bijective_with_autodiff_log_det(dtype, reverse):
  bijector = _bijector(_net(dtype), dtype, reverse=reverse)
  result = bijector_checks.assert_bijective_and_log_det(bijector, _images(dtype), 3)
  # The perturbed net moves every event: a non-trivial log-det is being checked.
  assert np.all(np.abs(result["fldj"]) > 0.5)


def test_conditional_bijective_and_labels_matter():
  net = _net(tf.float64, num_classes=3)
  bijector = _bijector(net, tf.float64, conditional=True)
  labels = tf.constant([0, 2, -1])
  bijector_checks.assert_bijective_and_log_det(bijector, _images(tf.float64), 3,
                                               conditional_input=labels)
  x = _images(tf.float64)
  z0 = bijector.inverse(x, conditional_input=tf.constant([0, 0, 0])).numpy()
  z1 = bijector.inverse(x, conditional_input=tf.constant([1, 1, 1])).numpy()
  assert np.abs(z0 - z1).max() > 1e-3


def _token_jacobian(bijector, x):
  """d z_tokens / d x_tokens `[N, T, d, T, d]` of the inverse, in the block's token order."""
  tokens, _ = bijector._to_tokens(x)  # pylint: disable=protected-access
  with tf.GradientTape() as tape:
    tape.watch(tokens)
    image = bijector._from_tokens(tokens, tf.shape(x)[:1])  # pylint: disable=protected-access
    z_tokens, _ = bijector._to_tokens(bijector.inverse(image))  # pylint: disable=protected-access
    z_flat = tf.reshape(z_tokens, [x.shape[0], -1])
  jacobian = tape.batch_jacobian(z_flat, tokens)
  return tf.reshape(jacobian, [x.shape[0], 4, 8, 4, 8]).numpy()


@pytest.mark.parametrize("reverse", [False, True])
def test_causality_block_triangular_jacobian(reverse):
  # Changing token j never changes the outputs of tokens before it; token i does depend
  # on the earlier tokens (the blocks below the diagonal are not zero).
  bijector = _bijector(_net(tf.float64), tf.float64, reverse=reverse)
  jacobian = _token_jacobian(bijector, _images(tf.float64, n=2))
  for i in range(4):
    for j in range(4):
      block = np.abs(jacobian[:, i, :, j, :]).max()
      if j > i:
        assert block == 0.0, (i, j)
      elif j < i:
        assert block > 1e-3, (i, j)
    # The diagonal block is diagonal: exp(-a_i), elementwise, and positive.
    diagonal = jacobian[:, i, :, i, :]
    np.testing.assert_array_equal(diagonal * (1 - np.eye(8)), 0.0)
    assert np.all(np.diagonal(diagonal, axis1=1, axis2=2) > 0.0)


def test_reverse_reads_tokens_in_reverse_raster_order():
  # With the net at its initial (zero) output the flow is the identity; a conditioner
  # that reads token position says which token is first. Patches of a 4x4 image with
  # P=2 in raster order: (0,0), (0,1), (1,0), (1,1).
  x = tf.reshape(tf.range(32, dtype=tf.float64), [1, *IMAGE])
  forward = _bijector(_net(tf.float64), tf.float64)
  backward = _bijector(_net(tf.float64), tf.float64, reverse=True)
  tokens, _ = forward._to_tokens(x)  # pylint: disable=protected-access
  reversed_tokens, _ = backward._to_tokens(x)  # pylint: disable=protected-access
  np.testing.assert_array_equal(tokens.numpy()[0, 1],
                                x.numpy()[0, 0:2, 2:4, :].reshape(-1))
  np.testing.assert_array_equal(reversed_tokens.numpy()[0, ::-1], tokens.numpy()[0])


def test_zero_conditioner_is_identity():
  net = nets.CausalTransformer(4, 8, channels=8, num_layers=1, heads=2, dtype="float64")
  net.build((None, 4, 8))
  bijector = _bijector(net, tf.float64)
  x = _images(tf.float64)
  np.testing.assert_array_equal(bijector.inverse(x).numpy(), x.numpy())
  np.testing.assert_array_equal(bijector.forward(x).numpy(), x.numpy())
  np.testing.assert_array_equal(bijector.inverse_log_det_jacobian(x, 3).numpy(), 0.0)


def test_kv_cache_sampling_equals_naive_float32():
  net = _net(tf.float32)
  z = _images(tf.float32, n=5, seed=3)
  kv = _bijector(net, tf.float32, sampling="kv_cache").forward_solve(z)
  naive = _bijector(net, tf.float32, sampling="naive").forward_solve(z)
  np.testing.assert_allclose(kv.value.numpy(), naive.value.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(kv.log_det.numpy(), naive.log_det.numpy(), rtol=1e-5,
                             atol=1e-4)
  assert int(kv.num_iterations) == 4 and int(naive.num_iterations) == 4 + 1
  assert np.all(kv.converged.numpy())
  # And it is the inverse of the parallel density pass.
  z_back = _bijector(net, tf.float32).inverse(bijector_checks.fresh(kv.value))
  np.testing.assert_allclose(z_back.numpy(), z.numpy(), atol=1e-5)


@pytest.mark.parametrize("block_size", [None, 2])
def test_jacobi_sampling_equals_sequential_within_tolerance(block_size):
  net = _net(tf.float64)
  z = _images(tf.float64, n=4, seed=4)
  exact = _bijector(net, tf.float64).forward_solve(z)
  tolerance = 1e-9
  jacobi = _bijector(net, tf.float64, sampling="jacobi", block_size=block_size,
                     tolerance=tolerance).forward_solve(z)
  assert np.all(jacobi.converged.numpy())
  np.testing.assert_allclose(jacobi.value.numpy(), exact.value.numpy(), rtol=0,
                             atol=10 * tolerance)
  np.testing.assert_allclose(jacobi.log_det.numpy(), exact.log_det.numpy(), atol=1e-7)
  # Honest count: at most block-size sweeps per block, plus the log-det pass.
  assert 2 <= int(jacobi.num_iterations) <= 4 + 1


def test_jacobi_at_identity_stops_after_one_sweep():
  net = nets.CausalTransformer(4, 8, channels=8, num_layers=1, heads=2, dtype="float64")
  net.build((None, 4, 8))
  result = _bijector(net, tf.float64, sampling="jacobi", block_size=2).forward_solve(
      _images(tf.float64))
  # One sweep per block of two (nothing moves), plus the log-det pass.
  assert int(result.num_iterations) == 2 + 1


def test_unconverged_jacobi_is_nan_or_an_error():
  net = _net(tf.float64, scale=1.0)
  z = _images(tf.float64, n=3, seed=5)
  result = _bijector(net, tf.float64, sampling="jacobi", max_iterations=1,
                     tolerance=1e-12).forward_solve(z)
  assert not np.any(result.converged.numpy())
  assert np.all(np.isnan(result.value.numpy()))
  assert np.all(np.isnan(result.log_det.numpy()))
  strict = _bijector(net, tf.float64, sampling="jacobi", max_iterations=1,
                     tolerance=1e-12, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="did not reach tolerance"):
    strict.forward(z)


@pytest.mark.parametrize("sampling", ["kv_cache", "jacobi"])
def test_xla_matches_eager(sampling):
  net = _net(tf.float32, num_classes=3)
  bijector = _bijector(net, tf.float32, conditional=True, sampling=sampling, reverse=True)
  labels = tf.constant([1, -1, 2])
  z = _images(tf.float32, seed=6)

  def both(z):
    x = bijector.forward(z, conditional_input=labels)
    return (x, bijector.forward_log_det_jacobian(z, 3, conditional_input=labels),
            bijector.inverse(tf.identity(x), conditional_input=labels),
            bijector.inverse_log_det_jacobian(tf.identity(x), 3, conditional_input=labels))

  x, fldj, z_back, ildj = bijector_checks.assert_xla_matches_eager(both, z, atol=1e-5)
  np.testing.assert_allclose(z_back, z.numpy(), atol=1e-5)
  np.testing.assert_allclose(fldj, -ildj, rtol=1e-5, atol=1e-4)
  assert np.all(np.isfinite(x))


def test_composes_with_chain_and_transformed_distribution():
  dtype = tf.float64
  net = _net(dtype, num_classes=3)
  block = _bijector(net, dtype, conditional=True, name="block/")
  chain = tfb.Chain([tfb.Scale(tf.constant(2.0, dtype)), block])
  base = tfd.Sample(tfd.Normal(tf.constant(0.0, dtype), 1.0), IMAGE)
  distribution = tfd.TransformedDistribution(base, chain)
  labels = tf.constant([2, 0, 1])
  kwargs = conditioning.conditional_kwargs(chain, labels)
  assert list(kwargs) == ["block"] and list(kwargs["block"]) == ["conditional_input"]
  x = _images(dtype, seed=7)
  log_prob = distribution.log_prob(x, bijector_kwargs=kwargs).numpy()
  # By hand: x = 2 y, y = block.forward(z).
  y = x / 2.0
  expected = (base.log_prob(block.inverse(y, conditional_input=labels))
              + block.inverse_log_det_jacobian(y, 3, conditional_input=labels)
              - 32 * np.log(2.0)).numpy()
  np.testing.assert_allclose(log_prob, expected, rtol=1e-12)
  samples = distribution.sample(3, seed=[1, 2], bijector_kwargs=kwargs)
  assert samples.shape == [3, *IMAGE] and np.all(np.isfinite(samples.numpy()))
  # tfb.Invert: the sampling direction becomes the density.
  inverted = tfb.Invert(block)
  np.testing.assert_allclose(
      inverted.forward(x, conditional_input=labels).numpy(),
      block.inverse(x, conditional_input=labels).numpy())


def test_labels_broadcast_to_the_batch_shape_as_tfp_broadcasts():
  bijector = _bijector(_net(tf.float64, num_classes=3), tf.float64, conditional=True)
  x = tf.constant(np.random.default_rng(8).normal(size=[2, 3, *IMAGE]))
  labels = tf.constant([0, 2, 1])
  expected = bijector.inverse_log_det_jacobian(
      x, 3, conditional_input=tf.broadcast_to(labels, [2, 3])).numpy()
  np.testing.assert_allclose(
      bijector.inverse_log_det_jacobian(x, 3, conditional_input=labels).numpy(), expected,
      rtol=1e-12)
  # [3, 2] labels hold as many entries as the [2, 3] batch; flattening would pair them
  # with the wrong images.
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="ncompatible"):
    bijector.inverse(x, conditional_input=tf.reshape(tf.range(6) % 3, [3, 2]))


def test_labels_outside_the_classes_are_an_error_or_nan_never_the_no_label_row():
  bijector = _bijector(_net(tf.float64, num_classes=3), tf.float64, conditional=True)
  x = _images(tf.float64)
  no_label = bijector.inverse_log_det_jacobian(x, 3, conditional_input=tf.constant(
      [-1, -1, -1])).numpy()
  compiled = tf.function(lambda x, labels: bijector.inverse_log_det_jacobian(
      x, 3, conditional_input=labels), jit_compile=True)
  for bad in ([0, 3, 1], [0, -7, 1], [0.0, 2.5, 1.0], [0.0, np.nan, 1.0]):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"integers in \[0, 3\)"):
      bijector.inverse(x, conditional_input=tf.constant(bad))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"integers in \[0, 3\)"):
      bijector.forward(x, conditional_input=tf.constant(bad))
    ildj = compiled(x, tf.constant(bad)).numpy()
    assert np.isnan(ildj[1]) and np.all(np.isfinite(ildj[[0, 2]])), ildj
    assert not np.isclose(ildj[1], no_label[1])


def test_kv_cache_sampling_maps_an_empty_batch():
  bijector = _bijector(_net(tf.float32), tf.float32)
  for jit_compile in (None, False, True):
    forward = bijector.forward if jit_compile is None else tf.function(
        bijector.forward, jit_compile=jit_compile,
        input_signature=[tf.TensorSpec([None, *IMAGE], tf.float32)])
    assert forward(tf.zeros([0, *IMAGE])).shape == [0, *IMAGE]
  z = _images(tf.float32, n=2)
  compiled = tf.function(bijector.forward, input_signature=[
      tf.TensorSpec([None, *IMAGE], tf.float32)])
  np.testing.assert_allclose(compiled(z).numpy(), bijector.forward(z).numpy(), rtol=1e-5,
                             atol=1e-6)


def test_batch_shapes_flatten_and_restore():
  bijector = _bijector(_net(tf.float64), tf.float64)
  x = tf.constant(np.random.default_rng(8).normal(size=[2, 3, *IMAGE]))
  z = bijector.inverse(x)
  ildj = bijector.inverse_log_det_jacobian(x, 3)
  assert z.shape == x.shape and ildj.shape == [2, 3]
  flat = bijector.inverse(tf.reshape(x, [6, *IMAGE]))
  np.testing.assert_allclose(tf.reshape(z, [6, *IMAGE]).numpy(), flat.numpy(), rtol=1e-12)


def test_errors_say_what_to_do():
  net = _net(tf.float32)
  with pytest.raises(ValueError, match="needs a decoder"):
    tffb.TransformerAutoregressive(net, IMAGE, PATCH)
  with pytest.raises(ValueError, match="must divide the image height"):
    tffb.TransformerAutoregressive(net, [5, 4, 2], PATCH, decoder=net)
  with pytest.raises(ValueError, match="sampling must be one of"):
    tffb.TransformerAutoregressive(net, IMAGE, PATCH, decoder=net, sampling="fast")
  bijector = _bijector(net, tf.float32)
  with pytest.raises(ValueError, match="expects images of shape"):
    bijector.inverse(tf.zeros([2, 4, 4, 3]))
  with pytest.raises(ValueError, match="conditional_input must be given exactly"):
    bijector.inverse(tf.zeros([2, *IMAGE]), conditional_input=tf.constant([0, 1]))
  strict = _bijector(net, tf.float32, validate_args=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="input is not finite"):
    strict.inverse(tf.fill([1, *IMAGE], np.nan))
