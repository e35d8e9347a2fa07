"""tfp_flows.models.TarFlow: structure, samplers, guidance, denoising, saving, training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import tfp_flows as tff
from tfp_flows.models import tarflow

IMAGE = [4, 4, 1]
TINY = {"patch_size": 2, "channels": 8, "num_blocks": 2, "layers_per_block": 1, "heads": 2}


def _model(num_classes=None, **kwargs):
  keras.utils.set_random_seed(0)
  return tff.models.TarFlow(IMAGE, num_bits=5, num_classes=num_classes, **{**TINY, **kwargs})


def _perturb(model, seed=0, scale=0.3):
  rng = np.random.default_rng(seed)
  for weight in model.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))


def _pixels(n=4, seed=0):
  return np.random.default_rng(seed).integers(0, 32, size=[n, *IMAGE]).astype("float32")


def test_structure_and_initial_log_prob_in_closed_form():
  model = _model()
  kinds = [type(layer).__name__ for layer in model.flow_layers]
  assert kinds == ["Dequantize", "NoiseAugmentation", "TarFlowBlock", "TarFlowBlock"]
  assert [layer.reverse for layer in model.flow_layers[2:]] == [False, True]
  assert isinstance(model, tff.models.TarFlowModel)
  # At initialisation the blocks are the identity: y = 2 ((x + 1/2) / 32 - 1/2) ~ N(0, 1).
  x = _pixels()
  y = 2.0 * ((x + 0.5) / 32.0 - 0.5)
  expected = stats.norm.logpdf(y).reshape(4, -1).sum(1) + 16 * math.log(2.0 / 32.0)
  np.testing.assert_allclose(model.log_prob(x).numpy(), expected, rtol=1e-5)


def test_kv_cache_naive_and_jacobi_samplers_agree():
  model = _model(num_classes=3)
  _perturb(model)
  z = tf.constant(np.random.default_rng(1).normal(size=[3, *IMAGE]).astype("float32"))
  labels = tf.constant([0, 2, -1])
  kwargs = tff.bijectors.conditional_kwargs(model.bijector, labels)

  def forward(sampling, **options):
    return model.sampling_bijector(sampling=sampling, **options).forward(z, **kwargs)

  kv_cache = forward("kv_cache").numpy()
  np.testing.assert_allclose(forward("naive").numpy(), kv_cache, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(forward("jacobi").numpy(), kv_cache, rtol=1e-4, atol=1e-3)
  # model.bijector is the same map (the layers' default sampler is the KV cache).
  np.testing.assert_allclose(model.bijector.forward(z, **kwargs).numpy(), kv_cache,
                             rtol=1e-6)


def test_guidance_zero_is_the_conditional_model_and_minus_one_the_unconditional():
  model = _model(num_classes=3)
  _perturb(model)
  plain = model.sample(4, seed=2, context=1).numpy()
  # guidance=0 through the guided sampler's own path (sampling= given) changes nothing.
  np.testing.assert_array_equal(
      model.sample(4, seed=2, context=1, guidance=0.0, sampling="kv_cache").numpy(), plain)
  z = tf.constant(np.random.default_rng(3).normal(size=[4, *IMAGE]).astype("float32"))
  labels = tf.constant([1, 1, 2, 0])
  routed = tff.bijectors.conditional_kwargs(model.bijector, labels)
  unlabelled = tff.bijectors.conditional_kwargs(model.bijector, -tf.ones_like(labels))
  unconditional = model.bijector.forward(z, **unlabelled).numpy()
  guided = model.sampling_bijector(guidance=-1.0).forward(z, **routed).numpy()
  np.testing.assert_allclose(guided, unconditional, rtol=1e-4, atol=1e-3)
  strong = model.sampling_bijector(guidance=2.0).forward(z, **routed).numpy()
  assert np.abs(strong - model.bijector.forward(z, **routed).numpy()).max() > 1e-2
  assert np.all(np.isfinite(model.sample(2, seed=2, context=[0, 2], guidance=2.0)))


def test_denoising_is_tweedie_on_the_initial_gaussian():
  # At initialisation the density at the noise layer's input u is N(0, 1/4) per pixel;
  # training noise s = noise_std / 2 there. Clean u0 ~ N(0, 1/4 - s^2) plus noise gives
  # exactly that density, and E[u0 | u] = u (1 - 4 s^2) (closed-form score -4u).
  model = _model(noise_std=0.5)
  s = 0.25
  rng = np.random.default_rng(4)
  clean = rng.normal(size=[256, *IMAGE]) * math.sqrt(0.25 - s**2)
  noisy = tf.constant((clean + s * rng.normal(size=clean.shape)).astype("float32"))
  denoised = tarflow.tweedie_denoise(
      lambda u: model._tail_log_prob(u, None, 1), noisy, s).numpy()  # pylint: disable=protected-access
  np.testing.assert_allclose(denoised, noisy.numpy() * (1 - 4 * s**2), rtol=1e-5, atol=1e-6)
  before = np.mean((noisy.numpy() - clean) ** 2)
  after = np.mean((denoised - clean) ** 2)
  # Theory: before = s^2 = 0.0625, after = s^2 (1 - 4 s^2) = 0.046875.
  assert after < before
  assert after == pytest.approx(0.046875, rel=0.08) and before == pytest.approx(0.0625,
                                                                                 rel=0.08)


def test_sample_denoise_maps_the_denoised_latent_to_pixels():
  model = _model(noise_std=0.5)
  n, temperature = 8, 0.8
  got = model.sample(n, seed=5, denoise=True, temperature=temperature).numpy()
  z = model.base_distribution.sample(n, seed=tf.constant([0, 5])).numpy() * temperature
  u = z / 2.0 * (1 - 4 * 0.25**2)
  expected = np.clip(np.floor((u + 0.5) * 32.0), 0, 31)
  np.testing.assert_array_equal(got, expected)
  plain = model.sample(n, seed=5, temperature=temperature).numpy()
  np.testing.assert_array_equal(plain, np.clip(np.floor((z / 2.0 + 0.5) * 32.0), 0, 31))


def test_keras_round_trip(tmp_path):
  model = _model(num_classes=3)
  _perturb(model)
  x, labels = _pixels(), np.array([0, 1, 2, 1], "int32")
  path = str(tmp_path / "tarflow.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded, tff.models.TarFlowModel)
  np.testing.assert_array_equal(loaded.log_prob(x, context=labels).numpy(),
                                model.log_prob(x, context=labels).numpy())
  np.testing.assert_array_equal(
      loaded.sample(2, seed=1, context=2, guidance=1.0).numpy(),
      model.sample(2, seed=1, context=2, guidance=1.0).numpy())


def test_saved_model_serves_log_prob_and_kv_cache_samples(tmp_path):
  model = _model()
  _perturb(model)
  path = str(tmp_path / "saved_model")
  tff.export.save(model, path)
  served = tf.saved_model.load(path)
  x = _pixels()
  np.testing.assert_allclose(
      served.signatures["log_prob"](x=tf.constant(x))["log_prob"].numpy(),
      model.log_prob(x).numpy(), rtol=1e-5, atol=1e-4)
  samples = served.signatures["sample"](n=tf.constant(3), seed=tf.constant([0, 7]))
  live = model.sample(3, seed=tf.constant([0, 7])).numpy()
  # Pixels are floored: a float32 round-off difference may move one across a bin edge.
  assert np.mean(samples["samples"].numpy() == live) > 0.95


def test_saved_model_serves_the_no_label_minus_one_as_the_live_model_does(tmp_path):
  # The export's label check allowed [0, num_classes) only: the unconditional density
  # and samples of a class-conditional TarFlow (label -1) could not be served.
  model = _model(num_classes=3)
  _perturb(model)
  path = str(tmp_path / "saved_model")
  tff.export.save(model, path)
  served = tf.saved_model.load(path)
  x, labels = _pixels(), np.array([1, -1, 2, -1], "int32")
  live = model.log_prob(x, context=labels).numpy()
  assert abs(live[1] - model.log_prob(x[1:2], context=[0]).numpy()[0]) > 1e-3
  np.testing.assert_allclose(
      served.signatures["log_prob"](x=tf.constant(x), context=tf.constant(labels))[
          "log_prob"].numpy(), live, rtol=1e-5, atol=1e-4)
  samples = served.signatures["sample"](n=tf.constant(2), seed=tf.constant([0, 7]),
                                        context=tf.constant(-1))["samples"]
  assert samples.shape == (2, *model.event_shape)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"class labels in \[0, 3\) or -1 \(no label\)"):
    served.signatures["log_prob"](x=tf.constant(x), context=tf.constant([1, -2, 2, 0]))


@pytest.mark.parametrize("guidance", [float("nan"), float("inf"), -float("inf")])
def test_a_guidance_that_is_not_finite_is_an_error_not_nan_samples(guidance):
  model = _model(num_classes=3)
  with pytest.raises(ValueError, match="guidance must be a finite number"):
    model.sample(2, seed=1, context=1, guidance=guidance)
  with pytest.raises(ValueError, match="guidance must be a finite number"):
    model.flow_layers[-1].make_bijector(guidance=guidance)


def test_trains_on_digits_under_xla():
  (x_train, y_train), _ = tff.data.load_digits_images()
  keras.utils.set_random_seed(0)
  model = tff.models.TarFlow([8, 8, 1], num_bits=5, num_classes=10, **TINY)
  model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
  history = model.fit(x_train[:128], y_train[:128], batch_size=64, epochs=3, verbose=0)
  bits = history.history["bits_per_dim"]
  assert np.all(np.isfinite(bits)) and bits[-1] < bits[0] - 0.1
  xla = tf.function(lambda x, c: model.log_prob(x, context=c), jit_compile=True)
  np.testing.assert_allclose(xla(x_train[:8], y_train[:8]).numpy(),
                             model.log_prob(x_train[:8], context=y_train[:8]).numpy(),
                             rtol=1e-5)
  samples = model.sample(2, seed=0, context=[3, 7], guidance=1.0, denoise=True).numpy()
  assert samples.shape == (2, 2, 8, 8, 1) and np.all((samples >= 0) & (samples <= 31))


def test_float64_model_samples_and_trains():
  # Under floatx float64 Keras' arange is int64: the KV-cache step compared it with the
  # int32 token index and failed.
  floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx("float64")
  keras.config.set_dtype_policy("float64")
  try:
    model = _model(num_classes=3)
    assert {w.dtype for w in model.weights} == {"float64"}
    samples = model.sample(2, seed=1, context=1, guidance=1.0, denoise=True)
    assert samples.dtype == tf.float64
    model.compile(optimizer="adam", jit_compile=True)
    x = _pixels().astype("float64")
    loss = model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0).history["loss"][0]
    assert math.isfinite(loss)
  finally:
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def test_sample_zero_draws_with_every_option():
  model = _model(num_classes=3)
  for options in ({}, {"sampling": "jacobi"}, {"guidance": 1.0}, {"denoise": True}):
    assert model.sample(0, seed=1, context=1, **options).shape == (0, *IMAGE)
    assert model.sample(tf.constant(0), seed=1, context=1, **options).shape == (0, *IMAGE)
  assert model.sample(tf.constant(2), seed=1, context=1, sampling="jacobi").shape == (
      2, *IMAGE)


def test_a_bad_label_is_an_error_never_the_no_label_density():
  model = _model(num_classes=3)
  _perturb(model)
  x = _pixels(3)
  good = model.log_prob(x, [0, 1, -1]).numpy()
  compiled = tf.function(model.log_prob, jit_compile=True)
  for bad in ([0, 1, 3], [0, 1, -7], [0.0, 1.0, 2.5], [0.0, 1.0, np.nan]):
    with pytest.raises(tf.errors.InvalidArgumentError, match="class labels must be"):
      model.log_prob(x, np.array(bad))
    value = compiled(x, tf.constant(bad, tf.float32)).numpy()
    assert np.isnan(value[2]) and np.allclose(value[:2], good[:2], rtol=1e-5), value
  with pytest.raises(tf.errors.InvalidArgumentError, match="class labels must be"):
    model.sample(1, seed=1, context=3)
  with pytest.raises(tf.errors.InvalidArgumentError, match="class labels must be"):
    model.sample(1, seed=1, context=3, guidance=1.0)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  with pytest.raises(tf.errors.InvalidArgumentError, match="class labels must be"):
    model.fit(x, np.array([0, 1, 5]), batch_size=3, epochs=1, verbose=0)


def test_an_unconditional_block_with_a_class_table_keeps_its_flag(tmp_path):
  block = tff.layers.TarFlowBlock(channels=8, heads=2, num_classes=3, conditional=False)
  model = tff.models.TarFlowModel([block], event_shape=IMAGE)
  _perturb(model)
  x = _pixels(2) / 32.0
  path = str(tmp_path / "block.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.flow_layers[0].conditional is False
  np.testing.assert_allclose(loaded.log_prob(x).numpy(), model.log_prob(x).numpy(),
                             rtol=1e-6)


def test_errors():
  model = _model()
  with pytest.raises(ValueError, match="needs a class-conditional model"):
    model.sample(2, guidance=1.0)
  with pytest.raises(ValueError, match="temperature must be positive"):
    model.sample(2, temperature=0.0, sampling="jacobi")
  no_noise = tff.models.TarFlowModel(
      [tff.layers.Dequantize(5, alpha=None), tff.layers.TarFlowBlock(channels=8, heads=2)],
      event_shape=IMAGE)
  with pytest.raises(ValueError, match="needs a NoiseAugmentation layer"):
    no_noise.sample(2, denoise=True)
  with pytest.raises(ValueError, match="num_blocks must be at least 1"):
    tff.models.TarFlow(IMAGE, num_blocks=0)
