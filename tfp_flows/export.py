"""SavedModel export: serve log_prob and sample without tfp_flows or TFP installed."""

import tensorflow as tf

from tfp_flows.bijectors import conditioning

__all__ = ["SIGNATURES", "save"]

SIGNATURES = ("log_prob", "sample", "sample_fresh", "forward", "inverse")

# Fresh seeds are drawn from [0, 2**31 - 1), the range `sample`'s `seed` input accepts.
_SEED_MAX = 2**31 - 1


class _FlowServing(tf.Module):
  """Traced serving functions of a FlowModel; the graph holds only core TF ops.

  Generic over `FlowModel`: every function goes through `model.log_prob`,
  `model.sample` and `model.bijector`, so a new preset needs nothing here.
  """

  def __init__(self, model):
    super().__init__(name="flow_serving")
    # Only the variables are tracked: a tracked Keras model would add its own serving
    # function, traced without the context a conditional flow needs. They are tracked
    # as the tf.Variables under the Keras 3 wrappers: session-based loaders (TensorFlow
    # Serving, `saved_model_cli run`) leave wrapped variables uninitialised.
    self.flow_variables = [variable.value for variable in model.variables]
    event = [None, *model.event_shape]
    latent = [None, *model.latent_shape]
    conditional = model.context_shape is not None
    context = ([tf.TensorSpec([None, *model.context_shape], model.context_dtype,
                              name="context")] if conditional else [])
    n = tf.TensorSpec([], tf.int32, name="n")
    self.log_prob = tf.function(
        lambda x, *c: {"log_prob": model.log_prob(x, *c)},
        input_signature=[tf.TensorSpec(event, tf.float32, name="x")] + context)
    self.sample = tf.function(
        lambda n, seed, *c: {"samples": model.sample(n, seed=seed, context=_row(c))},
        input_signature=[n, tf.TensorSpec([2], tf.int32, name="seed")] + _one_row(model))
    self.sample_fresh = tf.function(
        lambda n, *c: _sample_fresh(self.sample, n, c),
        input_signature=[n] + _one_row(model))
    self.forward = tf.function(
        lambda z, *c: {"x": _transform(model, "forward", z, c)},
        input_signature=[tf.TensorSpec(latent, tf.float32, name="z")] + context)
    self.inverse = tf.function(
        lambda x, *c: {"z": _transform(model, "inverse", x, c)},
        input_signature=[tf.TensorSpec(event, tf.float32, name="x")] + context)


def _sample_fresh(sample, n, context):
  # A stateful op with both seeds 0 takes its seed from the OS when its kernel is
  # created, then advances on every call. So each call, each loaded copy and each
  # server replica draws differently. A tracked tf.random.Generator would not: its
  # saved state would restart every loaded copy on the same sequence. `tf.raw_ops`
  # bypasses tf.random's global seed, which would otherwise be baked in at export.
  seed = tf.raw_ops.RandomUniformInt(shape=[2], minval=0, maxval=_SEED_MAX, seed=0,
                                     seed2=0)
  # Calls the traced `sample` graph rather than tracing the flow a second time.
  return {**sample(n, seed, *context), "seed": seed}


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
  """Writes `model` (any `tfp_flows.FlowModel`) as a SavedModel with serving signatures.

  Signatures (inputs -> outputs); `N` is unknown, so one traced graph serves every
  batch size:

  * `log_prob`: `x [N, *event_shape]` (+ `context [N, *context_shape]`) ->
    `log_prob [N]`, the evaluation-mode log-density (deterministic: no dequantisation
    noise, fixed log-det estimators).
  * `sample`: `n []` int32, `seed [2]` int32 in [0, 2**31) (+ one `context` row) ->
    `samples [n, *event_shape]`; the same as `model.sample(n, seed=seed)`: same seed,
    same samples.
  * `sample_fresh`: `n []` int32 (+ one `context` row) -> `samples`, and the `seed [2]`
    it drew; fresh samples on every call (seeded from the OS per loaded copy), and
    `sample(n, seed)` with the returned seed reproduces them.
  * `forward`: `z [N, *latent_shape]` -> `x`;  `inverse`: `x` -> `z` (+ `context`).
  * `serving_default`: the same function as `log_prob`.

  Load with `tf.saved_model.load(path).signatures["log_prob"](x=...)`, or serve with
  TensorFlow Serving under the same signature and input names.

  Args:
    model: a `tfp_flows.FlowModel` (any preset).
    path: directory to write.

  Returns:
    `path`.
  """
  serving = _FlowServing(model)
  signatures = {name: getattr(serving, name).get_concrete_function()
                for name in SIGNATURES}
  # What TensorFlow Serving and saved_model_cli run when a request names no signature.
  signatures["serving_default"] = signatures["log_prob"]
  tf.saved_model.save(serving, str(path), signatures=signatures)
  return path
