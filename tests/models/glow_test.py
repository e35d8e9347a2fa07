"""tfp_flows.models.Glow: shapes, class conditioning, variants, XLA, training on digits."""

import math
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows import data
from tfp_flows.bijectors import conditioning

TINY = {"steps_per_scale": 1, "hidden_channels": 8}


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(0)


def _walk(flow_layers):
  """Every flow layer, depth first, nested ones (GlowStep, FactorOut) included."""
  for layer in flow_layers:
    yield layer
    yield from _walk(getattr(layer, "flow_layers", []))


def _layers_of(model, cls):
  return [layer for layer in _walk(model.flow_layers) if isinstance(layer, cls)]


def _pixels(shape, num_bits, n=4, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 2 ** num_bits, size=[n, *shape]).astype("float32")


def _perturb(model, seed=1, scale=0.05):
  rng = np.random.default_rng(seed)
  for weight in model.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))


def _distribution_log_prob(model, x, context=None):
  kwargs = {}
  if context is not None:
    kwargs["bijector_kwargs"] = conditioning.conditional_kwargs(
        model.bijector, tf.constant(context))
  return model.distribution.log_prob(tf.constant(x), **kwargs).numpy()


# --- shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("image_shape,num_scales,latent_shape,kinds", [
    ([8, 8, 1], 1, [4, 4, 4],
     ["Dequantize", "Squeeze", "GlowStep", "GaussianPrior"]),
    ([8, 8, 1], 2, [4, 4, 4],
     ["Dequantize", "Squeeze", "GlowStep", "FactorOut", "Squeeze", "GlowStep",
      "GaussianPrior"]),
    ([4, 4, 2], 2, [2, 2, 8],
     ["Dequantize", "Squeeze", "GlowStep", "FactorOut", "Squeeze", "GlowStep",
      "GaussianPrior"]),
])
def test_structure_and_latent_shape(image_shape, num_scales, latent_shape, kinds):
  model = tff.models.Glow(image_shape, num_scales=num_scales, num_bits=3, **TINY)
  assert model.event_shape == image_shape
  assert model.latent_shape == latent_shape
  assert model.is_image_model
  top = [type(layer).__name__ for layer in _walk(model.flow_layers)
         if not isinstance(layer, (tff.layers.ActNorm, tff.layers.InvertibleConv1x1,
                                   tff.layers.CouplingLayer))]
  assert top == kinds
  assert model.bijector.inverse_event_shape(image_shape) == latent_shape
  samples = model.sample(3, seed=tf.constant([0, 1]))
  assert samples.shape == [3, *image_shape]
  log_prob = model.log_prob(_pixels(image_shape, 3)).numpy()
  assert log_prob.shape == (4,) and np.all(np.isfinite(log_prob))


@pytest.mark.parametrize("image_shape,num_scales,match", [
    ([6, 7, 1], 1, r"1 scales squeeze by 2: .* divisible by 2; got \[6, 7, 1\]"),
    ([8, 6, 1], 2, r"2 scales squeeze by 4: .* divisible by 4; got \[8, 6, 1\]"),
    ([4, 4, 1], 3, r"3 scales squeeze by 8: .* divisible by 8; got \[4, 4, 1\]"),
    ([8, 8, 1], 0, "num_scales and steps_per_scale must be at least 1"),
])
def test_bad_image_sizes_raise(image_shape, num_scales, match):
  with pytest.raises(ValueError, match=match):
    tff.models.Glow(image_shape, num_scales=num_scales, **TINY)


def test_bad_steps_and_variants_raise():
  with pytest.raises(ValueError, match="at least 1"):
    tff.models.Glow([8, 8, 1], num_scales=1, steps_per_scale=0)
  with pytest.raises(ValueError, match="coupling must be 'affine' or 'additive'"):
    tff.models.Glow([8, 8, 1], num_scales=1, coupling="spline", **TINY)
  with pytest.raises(ValueError, match="mask must be one of"):
    tff.models.Glow([8, 8, 1], num_scales=1, mask="stripes", **TINY)
  with pytest.raises(ValueError, match="num_bits must be in"):
    tff.models.Glow([8, 8, 1], num_scales=1, num_bits=0, **TINY)


# --- log_prob and sampling ---------------------------------------------------------


def test_log_prob_matches_the_transformed_distribution_at_bin_centres():
  model = tff.models.Glow([8, 8, 1], num_scales=2, num_bits=4, **TINY)
  _perturb(model)
  x = _pixels([8, 8, 1], 4)
  log_prob = model.log_prob(x).numpy()
  assert np.all(np.isfinite(log_prob))
  np.testing.assert_allclose(log_prob, _distribution_log_prob(model, x + 0.5),
                             rtol=1e-5, atol=1e-3)
  # Evaluation is deterministic; training-mode calls add fresh dequantisation noise.
  np.testing.assert_array_equal(model.log_prob(x).numpy(), log_prob)
  noisy = [model(tf.constant(x), training=True).numpy() for _ in range(2)]
  assert np.abs(noisy[0] - noisy[1]).min() > 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_samples_are_integer_pixels(temperature):
  num_bits = 3
  model = tff.models.Glow([4, 4, 2], num_scales=2, num_bits=num_bits, **TINY)
  _perturb(model, scale=0.2)
  samples = model.sample(64, seed=tf.constant([2, 3]), temperature=temperature).numpy()
  assert samples.shape == (64, 4, 4, 2)
  np.testing.assert_array_equal(samples, np.floor(samples))
  assert samples.min() >= 0 and samples.max() <= 2 ** num_bits - 1
  assert len(np.unique(samples)) > 1


def test_sample_floors_the_forward_of_tempered_base_draws():
  model = tff.models.Glow([4, 4, 2], num_scales=1, num_bits=3, **TINY)
  _perturb(model, scale=0.2)
  seed = tf.constant([5, 6])
  z = model.base_distribution.sample(32, seed=seed).numpy()
  # sample() maps temperature * z through the flow and floors the pixels.
  for temperature in (1.0, 0.5):
    expected = model.bijector.forward(tf.constant(temperature * z)).numpy()
    expected = np.clip(np.floor(expected), 0, 7)
    samples = model.sample(32, seed=seed, temperature=temperature).numpy()
    np.testing.assert_array_equal(samples, expected)


# --- class-conditional -------------------------------------------------------------


def test_class_conditional_log_prob_matches_the_prior_table():
  # One scale: Dequantize, Squeeze, GlowStep, then the class-conditional prior, so
  # log p(x | c) = ildj(first three layers) + sum log N(h; mu_c, sigma_c^2) over the
  # [4, 4, 4] latent h, with mu_c, log sigma_c the c-th row of the table.
  model = tff.models.Glow([8, 8, 1], num_scales=1, num_bits=4, num_classes=3, **TINY)
  _perturb(model)
  (prior,) = _layers_of(model, tff.layers.GaussianPrior)
  table = np.random.default_rng(2).normal(size=[3, 8]).astype("float32") * 0.5
  prior.table.assign(table)
  x = _pixels([8, 8, 1], 4, n=6)
  labels = np.array([0, 1, 2, 0, 1, 2], "int32")

  h, ildj = tf.constant(x), 0.0
  for layer in model.flow_layers[:-1]:
    h, layer_ildj = layer(h, training=False)
    ildj += layer_ildj.numpy().astype(np.float64)
  h = h.numpy().astype(np.float64)
  mu = table[labels, None, None, :4].astype(np.float64)
  log_sigma = table[labels, None, None, 4:].astype(np.float64)
  normal = (-0.5 * ((h - mu) * np.exp(-log_sigma)) ** 2 - log_sigma
            - 0.5 * math.log(2 * math.pi))
  expected = ildj + normal.sum(axis=(1, 2, 3))
  log_prob = model.log_prob(x, context=labels).numpy()
  np.testing.assert_allclose(log_prob, expected, rtol=1e-5)
  np.testing.assert_allclose(log_prob, _distribution_log_prob(model, x + 0.5, labels),
                             rtol=1e-5)


def test_class_conditional_multi_scale():
  model = tff.models.Glow([4, 4, 2], num_scales=2, num_bits=3, num_classes=3, **TINY)
  assert model.context_shape == [] and model.context_dtype == "int32"
  x = _pixels([4, 4, 2], 3, n=3)
  # With the zero-initialised table every label gives the same density ...
  same = [model.log_prob(x, context=np.full(3, c, "int32")).numpy() for c in range(3)]
  np.testing.assert_allclose(same[1], same[0], rtol=1e-6)
  (prior,) = _layers_of(model, tff.layers.GaussianPrior)
  # The last scale's latent is [1, 1, 16]: 16 means and 16 log-scales per label.
  prior.table.assign(np.random.default_rng(3).normal(size=[3, 32]).astype("float32"))
  # ... and after setting the table each label gives a different one.
  by_label = [model.log_prob(x, context=np.full(3, c, "int32")).numpy() for c in range(3)]
  for a, b in ((0, 1), (0, 2), (1, 2)):
    assert np.abs(by_label[a] - by_label[b]).min() > 1e-3
  mixed = model.log_prob(x, context=np.array([2, 0, 1], "int32")).numpy()
  np.testing.assert_allclose(mixed, [by_label[2][0], by_label[0][1], by_label[1][2]],
                             rtol=1e-6)
  np.testing.assert_allclose(mixed, _distribution_log_prob(model, x + 0.5, [2, 0, 1]),
                             rtol=1e-5)

  seed = tf.constant([7, 8])
  one = model.sample(5, seed=seed, context=1).numpy()
  assert one.shape == (5, 4, 4, 2)
  several = model.sample(5, seed=seed, context=[0, 1, 2]).numpy()
  assert several.shape == (5, 3, 4, 4, 2)
  for samples in (one, several):
    np.testing.assert_array_equal(samples, np.floor(samples))
    assert samples.min() >= 0 and samples.max() <= 7
  # Same seed and base draws, different label: different images.
  assert not np.array_equal(model.sample(5, seed=seed, context=0).numpy(), one)


# --- variants ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", [
    {"mask": "checkerboard"},
    {"coupling": "additive"},
    {"lu": False},
    {"logit_alpha": None},
], ids=["checkerboard", "additive", "plain_conv", "linear_pixels"])
def test_variants_evaluate_and_train(variant):
  model = tff.models.Glow([8, 8, 1], num_scales=2, num_bits=4, **TINY, **variant)
  couplings = _layers_of(model, tff.layers.CouplingLayer)
  convs = _layers_of(model, tff.layers.InvertibleConv1x1)
  if "mask" in variant:
    assert [c.mask for c in couplings] == ["checkerboard"] * 2
  if "coupling" in variant:
    assert all(isinstance(c, tff.layers.AdditiveCoupling) for c in couplings)
  if "lu" in variant:
    assert [c.lu for c in convs] == [False, False]
  if "logit_alpha" in variant:
    assert model.flow_layers[0].alpha is None
  _perturb(model)
  x = _pixels([8, 8, 1], 4, n=8)
  log_prob = model.log_prob(x).numpy()
  assert np.all(np.isfinite(log_prob))
  np.testing.assert_allclose(log_prob, _distribution_log_prob(model, x + 0.5),
                             rtol=1e-5, atol=1e-3)
  # Eager fit steps (graph and XLA training run in the digits test below).
  model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
  history = model.fit(x, batch_size=4, epochs=1, shuffle=False, verbose=0).history
  assert math.isfinite(history["bits_per_dim"][0])
  assert np.all(np.isfinite(model.sample(4, seed=tf.constant([1, 2])).numpy()))


@pytest.mark.parametrize("lu", [False, True], ids=["plain", "lu"])
def test_xla_log_prob_equals_eager(lu):
  model = tff.models.Glow([8, 8, 1], num_scales=2, num_bits=4, lu=lu, **TINY)
  _perturb(model)
  x = _pixels([8, 8, 1], 4, n=8)
  eager = model.log_prob(x).numpy()
  xla = tf.function(model.log_prob, jit_compile=True)(tf.constant(x)).numpy()
  np.testing.assert_allclose(xla, eager, rtol=1e-5)


# --- training ----------------------------------------------------------------------


def test_fit_on_digits_lowers_bits_per_dim_under_xla():
  # 256 training digits, 4 epochs of 4 steps, compiled with XLA. The untrained flow
  # (identity steps, standard-normal latents in logit space) sits near 6.2 bits/dim on
  # the test digits; ActNorm's initialisation and a few Adam steps bring it under 4.5
  # (observed: 3.9). The logged training values must fall too, and samples stay finite
  # integer pixels.
  (x_train, _), (x_test, _) = data.load_digits_images()
  x_train, x_test = x_train[:256], x_test[:128]
  model = tff.models.Glow([8, 8, 1], num_scales=2, num_bits=5, **TINY)

  def bits_per_dim():  # eager evaluation; flow_test checks evaluate's bits_per_dim
    return -model.log_prob(x_test).numpy().mean() / (64 * math.log(2.0))

  before = bits_per_dim()
  model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
  history = model.fit(x_train, batch_size=64, epochs=4, verbose=0).history
  after = bits_per_dim()

  assert before > 5.5
  assert after < before - 1.5
  assert all(math.isfinite(v) for v in history["bits_per_dim"])
  assert history["bits_per_dim"][-1] < history["bits_per_dim"][0]
  np.testing.assert_allclose(history["bits_per_dim"],
                             np.array(history["nll"]) / (64 * math.log(2.0)), rtol=1e-6)
  samples = model.sample(32, seed=tf.constant([3, 4]), temperature=0.7).numpy()
  assert np.all(np.isfinite(samples))
  np.testing.assert_array_equal(samples, np.floor(samples))
  assert samples.min() >= 0 and samples.max() <= 31
  z = model.base_distribution.sample(32, seed=tf.constant([3, 4]))
  assert np.all(np.isfinite(model.bijector.forward(z).numpy()))


def test_float_labels_must_be_whole_numbers_eagerly_and_under_xla():
  """Regression (issue 14): FlowModel cast label 1.5 to 1 before any check saw it."""
  model = tff.models.Glow([8, 8, 1], num_scales=1, num_bits=4, num_classes=3, **TINY)
  _perturb(model)
  x = _pixels([8, 8, 1], 4, n=3)
  whole = model.log_prob(x, context=np.array([0, 1, 2], "int32")).numpy()
  np.testing.assert_array_equal(
      model.log_prob(x, context=np.array([0.0, 1.0, 2.0], "float32")).numpy(), whole)
  bad = np.array([0.0, 1.5, 2.0], "float32")
  with pytest.raises(tf.errors.InvalidArgumentError):
    model.log_prob(x, context=bad)
  xla = tf.function(lambda v, c: model.log_prob(v, context=c), jit_compile=True)
  served = xla(tf.constant(x), tf.constant(bad)).numpy()
  assert np.isnan(served[1])
  np.testing.assert_allclose(served[[0, 2]], whole[[0, 2]], rtol=1e-5)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
