"""Keras flow layer for discrete pixels: uniform dequantisation and the logit transform."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import preprocessing
from tfp_flows.numerics import integer_check
from tfp_flows.layers import _replica_seed
from tfp_flows.layers import flow_layer
from tfp_flows.numerics import probes

__all__ = ["Dequantize"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class Dequantize(flow_layer.FlowLayer):
  """Integer pixels in [0, 2**num_bits) -> logit space, with every Jacobian counted.

  Data -> base: `v = x + u` (training: `u ~ U[0, 1)` from the layer's
  `keras.random.SeedGenerator`, independent on every `tf.distribute` replica;
  evaluation: `u = 1/2`, the bin centre, so `log_prob` is deterministic), then the
  bijector `tfb.Chain([tfb.Scale(2**num_bits), Logit(alpha)])` maps `v` to
  `logit(alpha + (1 - 2 alpha) v / 2**num_bits)`; with `alpha=None` it is Glow's linear
  map `v / 2**num_bits - 1/2` instead.

  Pixels must be integers in `[0, 2**num_bits)` (any real or integer dtype). Any other
  value (256 with num_bits=8, -1, 2.5, NaN) is an `InvalidArgumentError` eagerly and in
  graphs; under XLA, which cannot raise, the rows holding one come out NaN (so their
  `log_prob` is NaN), never a finite number.

  The flow's density is therefore over continuous pixels `v` in bins of width 1, so
  `-log p(x + u) / (D ln 2)` is bits/dim in the discrete pixel space, an upper bound on
  the discrete model's bits/dim in expectation over `u` (Theis et al. 2016,
  https://arxiv.org/abs/1511.01844). Samples are floored back to integers in
  [0, 2**num_bits - 1].

  Args:
    num_bits: bits per pixel of the data; pixel values must lie in [0, 2**num_bits).
    alpha: the logit margin (Real NVP uses 0.05), or None for no logit.
    seed: int seed of the dequantisation noise.
  """

  def __init__(self, num_bits=8, alpha=0.05, seed=None, **kwargs):
    super().__init__(**kwargs)
    if not 1 <= int(num_bits) <= 16:
      raise ValueError(f"num_bits must be in [1, 16]; got {num_bits!r}.")
    self.num_bits = int(num_bits)
    self.alpha = None if alpha is None else float(alpha)
    self.seed = seed
    if self.alpha is not None:
      preprocessing.Logit(self.alpha)  # validates alpha now
    self.seed_generator = keras.random.SeedGenerator(seed, name="dequantize_seed")

  @property
  def num_levels(self):
    return 2 ** self.num_bits

  def make_bijector(self):
    # Constants in the layer's dtype: a float32 tfb.Scale breaks a float64 flow.
    dtype = self.compute_dtype
    unit = (tfp.bijectors.Shift(tf.constant(0.5, dtype)) if self.alpha is None
            else preprocessing.Logit(self.alpha))
    return tfp.bijectors.Chain(
        [tfp.bijectors.Scale(tf.constant(self.num_levels, dtype)), unit],
        name=self.bijector_name())

  def call(self, inputs, context=None, training=None):
    inputs = tf.cast(inputs, self.compute_dtype)
    ok = integer_check.integers_in_range(
        inputs, self.num_levels,
        f"{self.name}: pixel values must be integers in [0, {self.num_levels}) "
        f"(num_bits={self.num_bits}). Pass the raw integer pixels, not pixels scaled to "
        "[0, 1], and set num_bits to the data's bit depth.")
    row_ok = tf.reduce_all(ok, axis=list(range(-self.event_ndims, 0)))
    if training:
      noise = tf.random.stateless_uniform(
          tf.shape(inputs), _replica_seed.draw_replica_seed(self.seed_generator),
          dtype=inputs.dtype, alg=probes.RNG_ALGORITHM)
    else:
      noise = tf.constant(0.5, inputs.dtype)
    z, ildj = super().call(inputs + noise, context=context, training=training)
    return integer_check.nan_where_not(row_ok, z), integer_check.nan_where_not(row_ok, ildj)

  def postprocess_sample(self, x):
    return tf.clip_by_value(tf.floor(x), tf.constant(0, x.dtype),
                            tf.constant(self.num_levels - 1, x.dtype))

  def get_config(self):
    return {**super().get_config(), "num_bits": self.num_bits, "alpha": self.alpha,
            "seed": self.seed}
