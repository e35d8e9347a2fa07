"""SavedModel export: serve log_prob and sample without tfp_flows or TFP installed."""

import tensorflow as tf

from tfp_flows import export_checks
from tfp_flows import bijectors as bijectors_lib

__all__ = ["SIGNATURES", "save"]

SIGNATURES = ("log_prob", "sample", "sample_fresh", "forward", "inverse")

# Fresh seeds are drawn from [0, 2**31 - 1), the range `sample`'s `seed` input accepts.
_SEED_MAX = 2**31 - 1


class _FlowServing(tf.Module):
  """The saved object: the flow's variables and its traced serving functions.

  The graph holds only core TF ops. Only the variables are tracked: a tracked Keras
  model would add its own serving function, traced without the context a conditional
  flow needs. They are tracked as the tf.Variables under the Keras 3 wrappers:
  session-based loaders (TensorFlow Serving, `saved_model_cli run`) leave wrapped
  variables uninitialised.
  """

  def __init__(self, model):
    super().__init__(name="flow_serving")
    self.flow_variables = [variable.value for variable in model.variables]
    functions = _ServingFunctions(model)
    for name in SIGNATURES:
      setattr(self, name, getattr(functions, name))


class _ServingFunctions:
  """The serving `tf.function`s of a FlowModel (a plain object: nothing here is saved
  but the traced graphs).

  Generic over `FlowModel`: every function goes through `model.log_prob`,
  `model.sample` and `model.bijector`, so a new preset needs nothing here. Each checks
  its inputs first (`export_checks.ServingContract`) and answers an empty request
  (`N = 0` rows, `n = 0`) with an empty result without running the flow, so the
  exported model serves those whether or not every layer handles an empty batch.
  """

  def __init__(self, model):
    self._model = model
    contract = self._contract = export_checks.ServingContract(model)
    context = [contract.spec("context")] if contract.conditional else []
    row = [contract.spec("row")] if contract.conditional else []
    self.log_prob = tf.function(self._log_prob,
                                input_signature=[contract.spec("x")] + context)
    self.sample = tf.function(
        self._sample, input_signature=[contract.spec("n"), contract.spec("seed")] + row)
    self.sample_fresh = tf.function(self._sample_fresh,
                                    input_signature=[contract.spec("n")] + row)
    self.forward = tf.function(self._forward,
                               input_signature=[contract.spec("z")] + context)
    self.inverse = tf.function(self._inverse,
                               input_signature=[contract.spec("x")] + context)

  def _log_prob(self, x, *context):
    x = self._contract.data("log_prob", x, pixels=True)
    context = self._batch_context("log_prob", context, x)
    return {"log_prob": _unless_empty(
        tf.shape(x)[0], lambda: self._model.log_prob(x, _row(context)),
        tf.zeros([0], self._contract.dtype))}

  def _sample(self, n, seed, *context):
    n = self._contract.count("sample", n)
    seed = self._contract.seed("sample", seed)
    context = self._one_row("sample", context)
    samples = lambda: self._model.sample(n, seed=seed, context=_row(context))
    return {"samples": _unless_empty(
        n, samples, tf.zeros([0, *self._model.event_shape], self._contract.dtype))}

  def _sample_fresh(self, n, *context):
    n = self._contract.count("sample_fresh", n)
    context = self._one_row("sample_fresh", context)
    # A stateful op with both seeds 0 takes its seed from the OS when its kernel is
    # created, then advances on every call. So each call, each loaded copy and each
    # server replica draws differently. A tracked tf.random.Generator would not: its
    # saved state would restart every loaded copy on the same sequence. `tf.raw_ops`
    # bypasses tf.random's global seed, which would otherwise be baked in at export.
    seed = tf.raw_ops.RandomUniformInt(shape=[2], minval=0, maxval=_SEED_MAX, seed=0,
                                       seed2=0)
    # Calls the traced `sample` graph rather than tracing the flow a second time.
    return {**self.sample(n, seed, *context), "seed": seed}

  def _forward(self, z, *context):
    z = self._contract.latent("forward", z)
    context = self._batch_context("forward", context, z)
    return {"x": self._transform("forward", z, context, self._model.event_shape)}

  def _inverse(self, x, *context):
    x = self._contract.data("inverse", x, pixels=False)
    context = self._batch_context("inverse", context, x)
    return {"z": self._transform("inverse", x, context, self._model.latent_shape)}

  def _batch_context(self, signature, context, rows):
    return tuple(self._contract.context(signature, c, rows) for c in context)

  def _one_row(self, signature, context):
    return tuple(self._contract.context(signature, c) for c in context)

  def _transform(self, direction, inputs, context, output_shape):
    def transform():
      # One bijector object for both the call and its routing: conditional kwargs are
      # keyed by bijector name, which a second construction inside a graph would uniquify.
      bijector = self._model.bijector
      kwargs = bijectors_lib.conditional_kwargs(bijector, _row(context))
      return getattr(bijector, direction)(inputs, **kwargs)
    result = _unless_empty(tf.shape(inputs)[0], transform,
                           tf.zeros([0, *output_shape], self._contract.dtype))
    # The signature declares what the flow returns; some bijectors lose the static shape.
    return tf.ensure_shape(result, [None, *output_shape])


def _unless_empty(size, compute, empty):
  """`compute()` if `size > 0`, else `empty` (the flow never sees an empty batch)."""
  return tf.cond(size > 0, compute, lambda: empty)


def _row(context):
  return context[0] if context else None


def save(model, path):
  """Writes `model` (any `tfp_flows.FlowModel`) as a SavedModel with serving signatures.

  Signatures (inputs -> outputs); `N` is unknown, so one traced graph serves every
  batch size, and float inputs and outputs have the model's float dtype (float32, or
  float64 for a model built under a float64 dtype policy or floatx):

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

  Every signature checks its inputs in the graph (`export_checks.ServingContract`:
  shapes, finite values, pixel values of a `Dequantize` model, class labels, `n >= 0`,
  the seed's range): a bad request raises `InvalidArgumentError` whose message names
  the signature, the input and what it must be, never a number. An empty request
  (`N = 0`, `n = 0`) returns empty outputs.

  Load with `tf.saved_model.load(path).signatures["log_prob"](x=...)`, or serve with
  TensorFlow Serving under the same signature and input names.

  Args:
    model: a `tfp_flows.FlowModel` (any preset).
    path: directory to write.

  Returns:
    `path`.

  Raises:
    TypeError: for anything but a `FlowModel`.
    ValueError: for a model with class labels (an integer context) whose label range
      no layer declares (`num_classes`).
  """
  # Duck-typed: tfp_flows.flow imports this module.
  if not all(hasattr(model, name) for name in ("event_shape", "flow_layers", "log_prob")):
    raise TypeError(f"tfp_flows.export.save takes a tfp_flows.FlowModel (or a preset's "
                    f"model); got {type(model).__name__}.")
  serving = _FlowServing(model)
  signatures = {name: getattr(serving, name).get_concrete_function()
                for name in SIGNATURES}
  # What TensorFlow Serving and saved_model_cli run when a request names no signature.
  signatures["serving_default"] = signatures["log_prob"]
  tf.saved_model.save(serving, str(path), signatures=signatures)
  return path
