"""Keras layer owning ActNorm's weights, with data-dependent initialisation."""

import keras
import tensorflow as tf

from tfp_flows.bijectors import act_norm
from tfp_flows.layers import flow_layer

__all__ = ["ActNorm"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class ActNorm(flow_layer.FlowLayer):
  """Per-channel affine flow layer (Glow's ActNorm), initialised from the first batch.

  On the first training call (inside `fit`, also under XLA and across replicas, where
  the statistics are all-reduced over the global batch) of a trainable layer (a frozen
  one, `trainable=False`, keeps its weights) it sets, per channel,

  ```none
  loc       = mean(x)
  log_scale = 0.5 log(var(x) + eps)    if var(x) > eps
              0                        otherwise (the channel is centred, not scaled)
  ```

  so that its data -> base output has zero mean and unit variance per channel. A
  channel that is constant in the first batch (a batch of one vector, or data sorted by
  a 0/1 column) carries no information about its spread: standardising it would divide
  later data by sqrt(eps) (a factor of 1000 at eps = 1e-6) and start training from a
  held-out NLL of 1e5 or more, so it is left unscaled and the scale is learned instead.
  A non-trainable `initialized` weight records the initialisation, so it survives
  `.keras` save/load.

  Args:
    data_init: whether to initialise from the first training batch.
    epsilon: positive float: the variance added before the log, and the variance at or
      below which a channel counts as constant and is not scaled.
  """

  def __init__(self, data_init=True, epsilon=1e-6, **kwargs):
    super().__init__(**kwargs)
    if not epsilon > 0:
      raise ValueError(f"epsilon must be positive; got {epsilon!r}.")
    self.data_init = bool(data_init)
    self.epsilon = float(epsilon)
    self._steps_clean = None

  def watch_steps(self, clean):
    """Initialise only while `clean()` (a bool tensor) holds: FlowModel's step guard."""
    # Set past Keras' attribute tracking: a callable of the model's bookkeeping, not state.
    object.__setattr__(self, "_steps_clean", clean)

  def build(self, input_shape):
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f"ActNorm needs a known channel count; got shape {input_shape}.")
    replica = "only_first_replica"
    self.loc = self.add_weight(shape=(channels,), initializer="zeros", name="loc",
                               aggregation=replica)
    self.log_scale = self.add_weight(shape=(channels,), initializer="zeros",
                                     name="log_scale", aggregation=replica)
    self.initialized = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                       name="initialized", aggregation=replica)
    super().build(input_shape)

  def make_bijector(self):
    return act_norm.ActNorm(self.loc, self.log_scale, name=self.bijector_name())

  def call(self, inputs, context=None, training=None):
    # A frozen layer keeps its weights in fit, as Keras' `trainable=False` promises.
    if training and self.data_init and self.trainable:
      self._initialize_from(inputs)
    return super().call(inputs, context=context, training=training)

  def _initialize_from(self, x):
    # Two passes (mean, then mean squared deviation) rather than E[x^2] - mean^2, which
    # cancels catastrophically for channels with a large mean and a small spread.
    axes = list(range(x.shape.rank - 1))
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
    total, count = _global_sum([tf.reduce_sum(x, axes), count])
    mean = total / count
    (squares,) = _global_sum([tf.reduce_sum(tf.square(x - mean), axes)])
    variance = squares / count
    # A non-finite batch initialises nothing: FlowModel skips its step and stops fit,
    # and the layer must not keep NaN statistics for the next, clean fit.
    finite = tf.reduce_all(tf.math.is_finite(mean)) & tf.reduce_all(
        tf.math.is_finite(variance))
    # After a skipped step of the same execution (steps_per_execution > 1) nothing is
    # applied either: the model's guard says so (set by FlowModel, see `watch_steps`).
    clean = self._steps_clean() if self._steps_clean is not None else True
    finite &= clean
    done = (self.initialized > 0) | ~finite
    self.loc.assign(tf.where(done, self.loc, mean))
    informative = variance > self.epsilon
    log_scale = tf.where(informative, 0.5 * tf.math.log(variance + self.epsilon),
                         tf.zeros_like(variance))
    self.log_scale.assign(tf.where(done, self.log_scale, log_scale))
    self.initialized.assign(tf.where(finite, tf.ones_like(self.initialized), self.initialized))

  def get_config(self):
    return {**super().get_config(), "data_init": self.data_init, "epsilon": self.epsilon}


def _global_sum(tensors):
  """Sums `tensors` over all replicas (the global batch) under a distribution strategy."""
  replica_context = tf.distribute.get_replica_context()
  if replica_context is not None and replica_context.num_replicas_in_sync > 1:
    return replica_context.all_reduce(tf.distribute.ReduceOp.SUM, tensors)
  return tensors
