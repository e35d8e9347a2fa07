"""The input contract of an exported flow: signature specs and the checks in its graph."""

import tensorflow as tf

from tfp_flows import layers

__all__ = ["ServingContract"]

# How many offending values an error message quotes.
_QUOTED = 3


class ServingContract:
  """What each serving signature of a `FlowModel` accepts, checked inside the graph.

  A served SavedModel gets whatever a client sends: neither the signatures of
  `tf.saved_model.load` nor TensorFlow Serving's session check a request against the
  signature's shapes, and a flow broadcasts a wrong shape into finite nonsense. So every
  input passes a `tf.debugging.Assert` before the flow sees it (the flow's ops wait for
  it), and a broken contract raises `InvalidArgumentError` with the message
  `assertion failed: [<signature>: <input> must ...; got ...] <offending values>`:

  * `x`: `[N, *event_shape]`, `z`: `[N, *latent_shape]`, in the model's float dtype
    (its variable dtype: float32, or float64 under a float64 policy); finite values.
  * pixel models (first layer `tfp_flows.layers.Dequantize(num_bits)`, e.g. Glow):
    `log_prob`'s `x` holds integers in `[0, 2**num_bits)`; `inverse` takes the
    dequantised data side of the bijector, the domain of its logit: values in
    `(-m, 2**num_bits + m)`, `m = alpha 2**num_bits / (1 - 2 alpha)`, which `forward`
    reaches (any finite value for `alpha=None`).
  * `context`: `[N, *context_shape]` with the `N` of `x` (or `z`), or one row
    `context_shape` for sampling; a float context is finite, class labels (an integer
    context) lie in `[0, num_classes)` of the model's class-conditional layer, or are
    -1 ("no label") when every such layer takes it (TarFlow).
  * `n`: a scalar `>= 0`;  `seed`: `[2]` int32 in `[0, 2**31)`.

  Dtypes are fixed by the signature: the loader or server rejects a tensor of another
  dtype before the graph runs (integer labels cannot arrive as floats).

  Args:
    model: the `tfp_flows.FlowModel` to serve.

  Raises:
    ValueError: if the model takes class labels but no layer says how many classes.
  """

  def __init__(self, model):
    self.dtype = tf.as_dtype(model.dtype_policy.variable_dtype)
    self.event_shape = list(model.event_shape)
    self.latent_shape = list(model.latent_shape)
    self.context_shape = model.context_shape
    self.context_dtype = tf.as_dtype(model.context_dtype)
    first = model.flow_layers[0]
    dequantize = first if isinstance(first, layers.Dequantize) else None
    self.num_bits = None if dequantize is None else dequantize.num_bits
    self.alpha = None if dequantize is None else dequantize.alpha
    self.num_classes, self.lowest_label = None, 0
    if self.context_shape is not None and self.context_dtype.is_integer:
      labelled = _class_conditional_layers(model.flow_layers)
      if labelled:
        self.num_classes = min(layer.num_classes for layer in labelled)
        if all(getattr(layer, "takes_no_label", False) for layer in labelled):
          self.lowest_label = -1
      if self.num_classes is None:
        raise ValueError(
            f"This model's context is {self.context_dtype.name} class labels, but no layer "
            "declares num_classes (e.g. tfp_flows.layers.GaussianPrior(num_classes=...)), "
            "so the exported model could not check the label range. Give the "
            "class-conditional layer a num_classes.")

  @property
  def conditional(self):
    return self.context_shape is not None

  def spec(self, name):
    """The `tf.TensorSpec` of input `name`: x, z, context (a batch), row (one context), n, seed."""
    shapes = {"x": ([None, *self.event_shape], self.dtype),
              "z": ([None, *self.latent_shape], self.dtype),
              "n": ([], tf.int32), "seed": ([2], tf.int32)}
    if self.conditional:
      shapes["context"] = ([None, *self.context_shape], self.context_dtype)
      shapes["row"] = (self.context_shape, self.context_dtype)
    shape, dtype = shapes[name]
    return tf.TensorSpec(shape, dtype, name="context" if name == "row" else name)

  def data(self, signature, x, pixels):
    """`x` `[N, *event_shape]`, checked; `pixels`: integer pixels (log_prob), else the
    continuous data side of the bijector."""
    x = _checked_shape(signature, "x", x, [None, *self.event_shape], "= [N, *event_shape]")
    if self.num_bits is None:
      return _checked_finite(signature, "x", x)
    levels = 2 ** self.num_bits
    if pixels:
      ok = (x >= 0) & (x < levels) & tf.equal(x, tf.floor(x))
      what = (f"hold pixel values, integers in [0, {levels}) (the Dequantize layer of the "
              f"model has num_bits={self.num_bits})")
    elif self.alpha is None:
      return _checked_finite(signature, "x", x)
    else:
      margin = self.alpha * levels / (1.0 - 2.0 * self.alpha)
      ok = (x > -margin) & (x < levels + margin)
      # No apostrophe: TensorFlow escapes it in assertion messages.
      what = (f"lie in ({-margin:.6g}, {levels + margin:.6g}), the domain of the logit of "
              f"the Dequantize layer of the model (num_bits={self.num_bits}, "
              f"alpha={self.alpha:g})")
    return _checked_values(signature, "x", x, ok, what)

  def latent(self, signature, z):
    """`z` `[N, *latent_shape]`, checked."""
    z = _checked_shape(signature, "z", z, [None, *self.latent_shape],
                       "= [N, *latent_shape]")
    return _checked_finite(signature, "z", z)

  def context(self, signature, context, rows=None):
    """`context` checked: `[N, *context_shape]` with `N = tf.shape(rows)[0]`, or one row.

    `rows` is the already checked `x` or `z` whose rows the context conditions; None
    for `sample`'s single row.
    """
    if rows is None:
      context = _checked_shape(signature, "context", context, self.context_shape,
                               "= context_shape, one row")
    else:
      context = _checked_shape(signature, "context", context,
                               [None, *self.context_shape], "= [N, *context_shape]")
      count = tf.shape(rows)[0]
      given = tf.shape(context)[0]
      context = _after(context, _assert(tf.equal(given, count), [
          f"{signature}: context must have one row per row of its input; got rows "
          "(context, input)", given, count]))
    if self.num_classes is None:
      return _checked_finite(signature, "context", context)
    no_label = " or -1 (no label)" if self.lowest_label < 0 else ""
    return _checked_values(signature, "context", context,
                           (context >= self.lowest_label) & (context < self.num_classes),
                           f"hold class labels in [0, {self.num_classes}){no_label}")

  def count(self, signature, n):
    """`n`, checked: a scalar >= 0."""
    n = _checked_shape(signature, "n", n, [], "a scalar")
    return _checked_values(signature, "n", n, n >= 0, "be >= 0")

  def seed(self, signature, seed):
    """`seed`, checked: two int32 in [0, 2**31)."""
    seed = _checked_shape(signature, "seed", seed, [2], "two int32 values")
    return _checked_values(signature, "seed", seed, seed >= 0, "lie in [0, 2**31)")


def _class_conditional_layers(flow_layers):
  """The (nested) layers that declare a `num_classes`."""
  found = []
  for layer in flow_layers:
    if getattr(layer, "num_classes", None) is not None:
      found.append(layer)
    found.extend(_class_conditional_layers(getattr(layer, "flow_layers", ())))
  return found


def _after(tensor, assertion):
  """`tensor`, computed only once `assertion` has passed."""
  with tf.control_dependencies([assertion]):
    return tf.identity(tensor)


def _checked_shape(signature, name, tensor, shape, meaning):
  """`tensor` after checking at run time that its shape is `shape` (None: any size).

  The traced graph takes the signature's static shape for granted: `tf.shape` of a
  fully known shape is a constant, and graph optimisation (grappler, in both loaders)
  folds the shape of a function argument to what the signature declares. A served
  request may have any shape, so the check reads the shape of a serialised and parsed
  copy, which no shape inference sees through. Appending -1s makes a wrong rank a
  mismatch rather than a broadcasting error: with `r = len(shape)`, the first `r + 1`
  entries of `[*actual_shape, -1, ..., -1]` must be `[*shape, -1]`.
  """
  actual = tf.shape(tf.io.parse_tensor(tf.io.serialize_tensor(tensor), tensor.dtype))
  rank = len(shape)
  padded = tf.concat([actual, tf.fill([rank + 1], -1)], 0)[:rank + 1]
  free = tf.constant([d is None for d in shape] + [False])
  expected = tf.constant([-1 if d is None else int(d) for d in shape] + [-1])
  ok = tf.reduce_all(tf.where(free, padded >= 0, tf.equal(padded, expected)))
  text = "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
  return _after(tensor, _assert(ok, [
      f"{signature}: {name} must have shape {text} ({meaning}); got shape", actual]))


def _checked_finite(signature, name, tensor):
  return _checked_values(signature, name, tensor, tf.math.is_finite(tensor), "be finite")


def _checked_values(signature, name, tensor, ok, requirement):
  """`tensor` after checking `ok` (elementwise); the message quotes offending values."""
  ok = tf.reshape(ok, [-1])
  bad = tf.boolean_mask(tf.reshape(tensor, [-1]), ~ok)[:_QUOTED]
  return _after(tensor, _assert(tf.reduce_all(ok), [
      f"{signature}: {name} must {requirement}; got values such as", bad]))


def _assert(ok, data):
  """`tf.debugging.Assert` that prints whole shapes (up to rank 7) and few values."""
  return tf.debugging.Assert(ok, data, summarize=8)
