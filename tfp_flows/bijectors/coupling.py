"""The generic coupling bijector: one code path for NICE, RealNVP, Glow and NSF couplings."""

import tensorflow as tf

from tfp_flows.bijectors import _tfp_glue
from tfp_flows.bijectors import network_bijector

__all__ = ["Coupling", "checkerboard_mask"]


def checkerboard_mask(height, width, channels=1, parity=0, dtype=tf.float32):
  """A `[height, width, channels]` 0/1 checkerboard; 1 marks the kept (conditioning) pixels.

  `parity` 0 keeps pixels with even `row + column`, 1 keeps the odd ones.
  """
  if parity not in (0, 1):
    raise ValueError(f"parity must be 0 or 1; got {parity!r}.")
  rows = tf.range(height)[:, tf.newaxis]
  cols = tf.range(width)[tf.newaxis, :]
  board = tf.cast(tf.math.floormod(rows + cols + parity, 2) == 0, dtype)
  return tf.tile(board[..., tf.newaxis], [1, 1, channels])


class Coupling(_tfp_glue.OnePassLogDet, network_bijector.NetworkBijector):
  """Coupling transform: a conditioner reads the kept part, a transformer moves the rest.

  The input is split into a kept part `x_a` and a transformed part `x_b`, either by
  channels (the last axis: `x_a = x[..., :k]`, `x_b = x[..., k:]`, or the other way round
  with `reverse=True`) or by a fixed 0/1 `mask` over the event (1 = kept; e.g.
  `checkerboard_mask`). With `h = conditioner(x_a)` (shape `x_b.shape + [P]` after a
  reshape of its last axis, `P = transformer.num_params`):

  ```none
  forward:   y_a = x_a,   y_b = T(x_b; h(x_a))
  inverse:   x_a = y_a,   x_b = T^{-1}(y_b; h(y_a))
  log-det:   log|det dy/dx| = sum over the transformed entries of log|T'(x_b; h)|
  ```

  The Jacobian is block-triangular, so its log-det is the sum of the transformer's
  elementwise log-derivatives. Both directions cost one conditioner pass; the
  transformer computes value and log-derivative together.

  The conditioner receives `x_a` (channel split) or `x * mask` (mask split), plus
  `conditional_input` when one is passed (`bijector.forward(x, conditional_input=c)`,
  or `bijector_kwargs` in `tfd.TransformedDistribution`), and must return a tensor whose
  last axis has `num_transformed * P` entries (`num_transformed` is the channel count of
  `x_b` for channel splits, all channels for mask splits), laid out as `[..., channels, P]`.

  With all-zero conditioner output every transformer here is the identity.

  #### References

  [1]: Dinh, Krueger, Bengio. NICE. https://arxiv.org/abs/1410.8516
  [2]: Dinh, Sohl-Dickstein, Bengio. Real NVP. https://arxiv.org/abs/1605.08803
  [3]: Kingma, Dhariwal. Glow. https://arxiv.org/abs/1807.03039
  [4]: Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows.
       https://arxiv.org/abs/1906.04032
  """

  def __init__(self, conditioner, transformer, num_channels, event_ndims=1,
               split_index=None, reverse=False, mask=None, conditional=False,
               validate_args=False, dtype=tf.float32, name="coupling"):
    """Creates the coupling.

    Args:
      conditioner: callable `(x_a) -> h` or `(x_a, conditional_input) -> h`.
      transformer: a `tfp_flows.bijectors.transformers.Transformer`.
      num_channels: size of the last axis of the event.
      event_ndims: rank of one event: 1 for vectors, 3 for `[H, W, C]` images.
      split_index: channel split point `k` (default `num_channels // 2`); ignored
        when `mask` is given.
      reverse: if True, keep the last `num_channels - k` channels and transform the
        first `k`.
      mask: optional 0/1 tensor broadcastable to the event shape; 1 marks kept entries.
      conditional: whether the conditioner takes `conditional_input`; passing one to
        a non-conditional coupling is an error rather than silently ignored.
      validate_args: if True, check that inputs and conditioner outputs are finite.
      dtype: float dtype of the inputs.
      name: name scope.

    Raises:
      ValueError: for a bad split, a missing transformer or a non-callable conditioner.
    """
    parameters = dict(locals())
    if int(event_ndims) < 1:
      raise ValueError(f"event_ndims must be at least 1; got {event_ndims!r}.")
    num_channels = int(num_channels)
    if mask is None:
      split_index = num_channels // 2 if split_index is None else int(split_index)
      if not 0 < split_index < num_channels:
        raise ValueError(
            f"split_index must be in [1, {num_channels - 1}] for {num_channels} channels; "
            f"got {split_index}. A coupling needs at least one kept and one transformed "
            "channel; use a mask for a single-channel input.")
    with tf.name_scope(name) as name:
      self._num_channels = num_channels
      self._split_index = split_index
      self._reverse = bool(reverse)
      self._mask = None if mask is None else tf.convert_to_tensor(mask, dtype=dtype)
      super().__init__(
          conditional=conditional, conditioner=conditioner, transformer=transformer,
          forward_min_event_ndims=int(event_ndims), dtype=tf.as_dtype(dtype),
          validate_args=validate_args, parameters=parameters, name=name)

  def _params(self, x_a, conditional_input, num_transformed):
    h = self._call_conditioner(x_a, self.forward_min_event_ndims, conditional_input,
                               "Coupling")
    num_params = self._transformer.num_params
    expected = num_transformed * num_params
    if h.shape[-1] is not None and h.shape[-1] != expected:
      raise ValueError(
          f"The conditioner must return {num_transformed} x {num_params} = {expected} "
          f"values on its last axis; got shape {h.shape.as_list()}.")
    tail = [num_transformed, num_params]
    if h.shape[:-1].is_fully_defined():  # a static shape: fewer graph ops to trace
      return tf.reshape(h, h.shape[:-1].as_list() + tail)
    return tf.reshape(h, tf.concat([tf.shape(h)[:-1], tail], axis=0))

  def _split(self, x):
    k = self._split_index
    first, second = tf.split(x, [k, self._num_channels - k], axis=-1)
    return (second, first) if self._reverse else (first, second)

  def _join(self, kept, moved):
    parts = [moved, kept] if self._reverse else [kept, moved]
    return tf.concat(parts, axis=-1)

  def _apply(self, x, conditional_input, direction):
    """Returns (output, log-det of one event) for direction 'forward' or 'inverse'."""
    if self.validate_args:
      x = tf.debugging.assert_all_finite(x, "Coupling: input is not finite.")
    if x.shape[-1] is not None and x.shape[-1] != self._num_channels:
      raise ValueError(f"Coupling expects {self._num_channels} channels on the last "
                       f"axis; got shape {x.shape.as_list()}.")
    transform = getattr(self._transformer, direction)
    axes = list(range(-self.forward_min_event_ndims, 0))
    if self._mask is None:
      kept, moved = self._split(x)
      k = self._split_index
      num_moved = k if self._reverse else self._num_channels - k
      params = self._params(kept, conditional_input, num_moved)
      moved, log_det = transform(moved, params)
      return self._join(kept, moved), tf.reduce_sum(log_det, axis=axes)
    mask = self._mask
    params = self._params(x * mask, conditional_input, self._num_channels)
    moved, log_det = transform(x, params)
    keep = tf.broadcast_to(mask > 0, tf.shape(x))
    out = tf.where(keep, x, moved)
    return out, tf.reduce_sum(tf.where(keep, tf.zeros_like(log_det), log_det), axis=axes)

  def _forward_and_log_det(self, x, conditional_input):
    return self._apply(x, conditional_input, "forward")

  def _inverse_and_log_det(self, y, conditional_input):
    return self._apply(y, conditional_input, "inverse")
