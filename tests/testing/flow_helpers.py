"""Small helpers the flow, layer and model tests share (our own, no private testing APIs).

* `perturb_weights`: moves every trainable weight off its initial value, so a
  zero-initialised last conditioner layer cannot hide a wrong or untracked network.
* `distribution_log_prob`: `model.distribution.log_prob`, routing a context to the
  conditional bijectors the way TFP distributions take it (`bijector_kwargs`).
* `normal_data`: seeded standard-normal test inputs.
* `assert_same_reverse_kl_model`: a reloaded reverse-KL model gives the original's
  log-density and evaluation ELBO.
"""

import keras
import numpy as np
import tensorflow as tf

from tfp_flows.bijectors import conditioning

__all__ = ["perturb_weights", "distribution_log_prob", "normal_data",
           "assert_same_reverse_kl_model"]


def perturb_weights(model, seed=1, scale=0.1):
  """Adds `scale * N(0, 1)` noise (seeded) to every trainable weight of `model`; returns it."""
  rng = np.random.default_rng(seed)
  for weight in model.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))
  return model


def distribution_log_prob(model, x, context=None):
  """`model.distribution.log_prob(x)` as numpy, with `context` routed by `bijector_kwargs`."""
  kwargs = {}
  if context is not None:
    kwargs["bijector_kwargs"] = conditioning.conditional_kwargs(
        model.bijector, tf.constant(context))
  return model.distribution.log_prob(tf.constant(x), **kwargs).numpy()


def normal_data(shape, seed=0, dtype="float32"):
  """Seeded standard-normal numbers of `shape` and `dtype` (numpy)."""
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def assert_same_reverse_kl_model(loaded, model):
  """`loaded` has `model`'s log-density and evaluation ELBO (a fixed seed), to 1e-6."""
  x = tf.constant([[0.5, -1.0], [2.0, 0.0]])
  np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x), rtol=1e-6)
  expected = model.evaluate(tf.zeros([1, 1]), verbose=0, return_dict=True)["elbo"]
  loaded.compile(optimizer="adam")
  got = loaded.evaluate(tf.zeros([1, 1]), verbose=0, return_dict=True)["elbo"]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
