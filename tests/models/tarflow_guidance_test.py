"""Classifier-free guidance of `tff.models.TarFlow`: the convention of apple/ml-tarflow.

Every block's parameters (log-scale and shift) become
`h_w = h(x, c) + w (h(x, c) - h(x, none))`, so `w = 0` is the plain conditional model
and `w = -1` the unconditional (null-label) one. Checked on a perturbed class-conditional
model for all three samplers, eagerly and under XLA:

* `w = 0` is exactly (bit for bit) the model without guidance;
* `w = -1` with any labels is the model given the null label, to float32 round-off:
  `c + (-1)(c - u)` rounds `c - u` once, an ulp of `|c|`, and the sequential sampler
  carries it through the later tokens (measured 1.5 ulps of the largest sample value
  eagerly, 8 under XLA, whose fused graph rounds differently from the null model's).
  The labelled model differs from the null one by ~100, so the check can fail.
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

IMAGE = [4, 4, 1]
TINY = {"patch_size": 2, "channels": 8, "num_blocks": 2, "layers_per_block": 1, "heads": 2}
SAMPLERS = ["kv_cache", "jacobi", "naive"]
EPS = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def model():
  keras.utils.set_random_seed(0)
  flow = tff.models.TarFlow(IMAGE, num_bits=5, num_classes=3, **TINY)
  rng = np.random.default_rng(0)
  for weight in flow.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + 0.3 * rng.normal(size=value.shape).astype(value.dtype))
  return flow


Z = tf.constant(np.random.default_rng(3).normal(size=[8, *IMAGE]).astype("float32"))
LABELS = tf.constant([1, 1, 2, 0, 0, 2, 1, 0])
NONE = -tf.ones_like(LABELS)


def _forward(bijector, labels, jit_compile):
  def forward(z, labels):
    return bijector.forward(z, **tff.bijectors.conditional_kwargs(bijector, labels))
  if jit_compile:
    forward = tf.function(forward, jit_compile=True)
  return forward(Z, labels).numpy()


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("sampling", SAMPLERS)
def test_guidance_zero_is_exactly_the_unguided_model(model, sampling, jit_compile):
  guided = _forward(model.sampling_bijector(guidance=0.0, sampling=sampling), LABELS,
                    jit_compile)
  plain = _forward(model.sampling_bijector(sampling=sampling), LABELS, jit_compile)
  np.testing.assert_array_equal(guided, plain)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("sampling", SAMPLERS)
def test_guidance_minus_one_is_the_null_label_model(model, sampling, jit_compile):
  guided = _forward(model.sampling_bijector(guidance=-1.0, sampling=sampling), LABELS,
                    jit_compile)
  unconditional = _forward(model.sampling_bijector(sampling=sampling), NONE, jit_compile)
  conditional = _forward(model.sampling_bijector(sampling=sampling), LABELS, jit_compile)
  scale = np.abs(unconditional).max()
  assert np.abs(conditional - unconditional).max() > 10.0
  ulps = 32 if jit_compile else 8
  np.testing.assert_allclose(guided, unconditional, rtol=0, atol=ulps * EPS * scale)


def test_guided_density_and_samples_at_minus_one(model):
  # The density direction (one parallel pass) and the pixel samples of `sample`.
  x = model.bijector.forward(Z, **tff.bijectors.conditional_kwargs(model.bijector, NONE))
  guided = model.sampling_bijector(guidance=-1.0)
  kwargs = tff.bijectors.conditional_kwargs(guided, LABELS)
  null = tff.bijectors.conditional_kwargs(model.bijector, NONE)
  np.testing.assert_allclose(guided.inverse(x, **kwargs).numpy(), Z.numpy(), atol=1e-4)
  np.testing.assert_allclose(
      guided.inverse_log_det_jacobian(x, 3, **kwargs).numpy(),
      model.bijector.inverse_log_det_jacobian(x, 3, **null).numpy(), rtol=1e-6)
  samples = model.sample(16, seed=2, context=[2, 0], guidance=-1.0).numpy()
  null_samples = model.sample(16, seed=2, context=[-1, -1]).numpy()
  # Pixels are floored: round-off may move one across a bin edge, rarely.
  assert np.mean(samples == null_samples) > 0.99
  assert np.mean(model.sample(16, seed=2, context=[2, 0]).numpy() == null_samples) < 0.9


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
