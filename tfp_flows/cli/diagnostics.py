"""Flow diagnostics for TensorBoard: per-layer log-dets and an invertibility check.

Summaries are written with core `tf.summary.write` and the scalars plugin's metadata,
so TensorBoard shows them as scalars while training needs no `tensorboard` package
(Keras' own `TensorBoard` callback does: its `tf.summary.scalar` comes from there).
"""

import os

import keras
import numpy as np
import tensorflow as tf

__all__ = ["layer_log_dets", "invertibility_error", "FlowSummaries"]

# What `tensorboard.summary.scalar` attaches: the scalars plugin with empty content.
_SCALAR = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))


def layer_log_dets(model, x):
  """Mean log-det each top-level flow layer contributes on `x`, in evaluation mode.

  Walks `model.flow_layers` data -> base as `log_prob` does, so
  `log p(x) = log N(z) + sum_i log|det dz_i / dz_{i-1}|` (z_0 = x, z = last z_i) and
  the returned means add up to `mean(model.log_prob(x))`. Only top-level layers are
  listed: a multi-scale `FactorOut` reports its split prior and nested scales as one.

  Args:
    model: an unconditional `tfp_flows.FlowModel`.
    x: a batch of data rows.

  Returns:
    `(log_dets, base_log_prob, z)`: a list of `(layer name, mean log-det in nats)`, the
    mean base log-density of the latents, and the latents `z` themselves.
  """
  z = tf.convert_to_tensor(np.asarray(x, dtype="float32"))
  log_dets = []
  for layer in model.flow_layers:
    z, ildj = layer(z, training=False)
    log_dets.append((layer.name, float(tf.reduce_mean(ildj))))
  return log_dets, float(tf.reduce_mean(model.base_distribution.log_prob(z))), z


def invertibility_error(model, z):
  """`max |inverse(forward(z)) - z|` through `model.bijector`, NaN if a row fails.

  Residual flows invert by fixed-point iteration and return NaN rows when it does not
  converge; NaN propagates here so that a failure cannot look like a small error.
  """
  # Fresh tensors on both legs: TFP caches bijector results by tensor (across instances
  # with equal parameters), so forward of latents that an inverse produced would just
  # return that inverse's input, and the check would compare a computation with itself.
  z = np.asarray(z)
  bijector = model.bijector
  x = bijector.forward(tf.constant(z)).numpy()
  z_again = bijector.inverse(tf.constant(x)).numpy()
  return float(np.max(np.abs(z_again.astype(np.float64) - z)))


class FlowSummaries(keras.callbacks.Callback):
  """Writes training metrics and flow diagnostics to TensorBoard after every epoch.

  Under `logdir/train`: `epoch_<metric>` for every metric `fit` logs (nll, and
  bits_per_dim for images). Under `logdir/held_out`, on the batch `x`:
  `log_det/<index>_<layer name>` (the mean log-det of each top-level layer, nats),
  `log_prob/base` (mean base log-density of the latents), `log_prob/total` (their sum,
  the mean log-likelihood) and `invertibility/max_abs_error` (`invertibility_error`
  at the latents of `x`). The step is the epoch index, as in Keras.

  Args:
    logdir: TensorBoard log directory.
    x: a held-out batch of data rows.
  """

  def __init__(self, logdir, x):
    super().__init__()
    self._x = x
    self._train = tf.summary.create_file_writer(os.path.join(logdir, "train"))
    self._held_out = tf.summary.create_file_writer(os.path.join(logdir, "held_out"))

  def on_epoch_end(self, epoch, logs=None):
    with self._train.as_default():
      for name, value in (logs or {}).items():
        _scalar(f"epoch_{name}", value, epoch)
    log_dets, base, z = layer_log_dets(self.model, self._x)
    with self._held_out.as_default():
      for index, (name, value) in enumerate(log_dets):
        _scalar(f"log_det/{index:02d}_{name}", value, epoch)
      _scalar("log_prob/base", base, epoch)
      _scalar("log_prob/total", base + sum(v for _, v in log_dets), epoch)
      _scalar("invertibility/max_abs_error", invertibility_error(self.model, z), epoch)
    self._train.flush()
    self._held_out.flush()

  def on_train_end(self, logs=None):
    self._train.close()
    self._held_out.close()


def _scalar(tag, value, step):
  tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=_SCALAR)
