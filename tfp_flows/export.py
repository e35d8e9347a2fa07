"""SavedModel export: serve log_prob and sample without tfp_flows or TFP installed."""

import tensorflow as tf

from tfp_flows.bijectors import conditioning

__all__ = ["save"]


class _FlowServing(tf.Module):
  """Traced serving functions of a FlowModel; the graph holds only core TF ops."""

  def __init__(self, model):
    super().__init__(name="flow_serving")
    # Only the variables are tracked: a tracked Keras model would add its own serving
    # function, traced without the context a conditional flow needs.
    self.flow_variables = list(model.variables)
    event = [None, *model.event_shape]
    latent = [None, *model.latent_shape]
    conditional = model.context_shape is not None
    context = ([tf.TensorSpec([None, *model.context_shape], model.context_dtype,
                              name="context")] if conditional else [])
    self.log_prob = tf.function(
        lambda x, *c: {"log_prob": model.log_prob(x, *c)},
        input_signature=[tf.TensorSpec(event, tf.float32, name="x")] + context)
    self.sample = tf.function(
        lambda n, seed, *c: {"samples": model.sample(n, seed=seed, context=_row(c))},
        input_signature=[tf.TensorSpec([], tf.int32, name="n"),
                         tf.TensorSpec([2], tf.int32, name="seed")] + _one_row(model))
    self.forward = tf.function(
        lambda z, *c: {"x": _transform(model, "forward", z, c)},
        input_signature=[tf.TensorSpec(latent, tf.float32, name="z")] + context)
    self.inverse = tf.function(
        lambda x, *c: {"z": _transform(model, "inverse", x, c)},
        input_signature=[tf.TensorSpec(event, tf.float32, name="x")] + context)


def _row(context):
  return context[0] if context else None


def _one_row(model):
  if model.context_shape is None:
    return []
  return [tf.TensorSpec(model.context_shape, model.context_dtype, name="context")]


def _transform(model, direction, inputs, context):
  # One bijector object for both the call and its routing: conditional kwargs are keyed
  # by bijector name, which a second construction inside a graph would uniquify.
  bijector = model.bijector
  kwargs = conditioning.conditional_kwargs(bijector, _row(context))
  return getattr(bijector, direction)(inputs, **kwargs)


def save(model, path):
  """Writes `model` as a SavedModel with serving signatures.

  Signatures (inputs -> outputs), batch dimension unknown:

  * `log_prob`: `x [N, *event_shape]` (+ `context [N, *context_shape]`) -> `log_prob [N]`
  * `sample`: `n []` int32, `seed [2]` int32 (+ one `context` row) ->
    `samples [n, *event_shape]`; same seed, same samples
  * `forward`: `z [N, *latent_shape]` -> `x`;  `inverse`: `x` -> `z`

  Load with `tf.saved_model.load(path).signatures["log_prob"](x=...)`; TensorFlow
  Serving serves the same signature names.
  """
  serving = _FlowServing(model)
  signatures = {name: getattr(serving, name).get_concrete_function()
                for name in ("log_prob", "sample", "forward", "inverse")}
  tf.saved_model.save(serving, str(path), signatures=signatures)
  return path
