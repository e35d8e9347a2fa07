"""A stack of identical [rotation, half coupling] blocks run as one loop."""

import tensorflow as tf

from tfp_flows.bijectors import _tfp_glue
from tfp_flows.bijectors import batching
from tfp_flows.bijectors import network_bijector
from tfp_flows.numerics import checks

__all__ = ["CouplingScan", "half_rotation"]


class CouplingScan(_tfp_glue.OnePassLogDet, network_bijector.NetworkBijector):
  """L blocks of [rotate the vector by half, couple its halves], as one `tf.while_loop`.

  For vectors `[D]` with `k = D // 2` kept entries, block `j` (of `L`, listed from the
  data side as in `tfb.Chain`) is the rotation `R` (data -> base:
  `R(x) = [x_k, ..., x_{D-1}, x_0, ..., x_{k-1}]`) followed by a coupling `C_j` that
  moves the last `D - k` entries given the first `k`, with parameters
  `h_j = conditioner(x_a, weights_j)`:

  ```none
  C_j:      y_a = x_a,   y_b = T(x_b; h_j(x_a)),      log|det| = sum log T'
  inverse (data -> base):   z = x;  for j = 0 .. L-1:  z = C_j^{-1}(R z)
  forward (base -> data):   x = z;  for j = L-1 .. 0:  x = R^{-1} C_j(x)
  log-det:  the sum of the L couplings' log-dets (a rotation has log-det 0)
  ```

  The rotation brings the entries a coupling moved to the front, where the next one
  conditions on them. (A reversal does that too for even D, but for odd D it leaves the
  middle entry in the moved half of every block, so that no other entry ever depends on
  it; the rotation moves every entry through both halves.)

  This is the same transform as `tfb.Chain` over L blocks of
  `[tfb.Permute(half_rotation(D)), Coupling(transformer)]` whose conditioners hold the
  slices `weights_j` (the `NeuralSplineFlow` preset with `linear="permute"`), but the
  blocks' weights are stacked on a leading axis of length L and one loop body serves
  every block: TensorFlow traces, and XLA compiles, one block instead of L, and an
  optimizer updates one variable per stacked weight instead of L. The price is the
  loop: the blocks run one after another without fusion across them, and the gradient
  stores each block's intermediates. Cost per direction: L conditioner passes and L
  transformer evaluations, as for the chain. FlowJAX builds its flows the same way
  (`Scan` over stacked layers). Second derivatives (a gradient of a gradient, as in
  score matching) run eagerly and in graph mode but do not compile under XLA: the
  loop's second-order gradient computes shapes that XLA cannot take as constants. The
  chain of unrolled blocks compiles them.

  Args:
    conditioner: callable `(x_a, weights)` or, when `conditional`, `(x_a, weights,
      conditional_input)`, on one batch axis; `weights` is the list of one block's
      slices of `block_weights()`. Returns `[N, (D - k) * P]`, P the transformer's
      `num_params`, laid out as `[N, D - k, P]`.
    transformer: a `tfp_flows.bijectors.transformers.Transformer`.
    num_channels: D >= 2.
    block_weights: callable returning a list of tensors with leading axis L, read on
      every call (so a bijector built once sees trained values).
    num_blocks: L >= 1, the length of that axis.
    conditional: whether calls take `conditional_input`.
    validate_args: if True, check that inputs are finite.
    dtype: float dtype of the inputs.
    name: name scope.

  Raises:
    ValueError: for D < 2, L < 1, a non-callable `block_weights` or conditioner.

  #### References

  [1]: Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows.
       https://arxiv.org/abs/1906.04032
  [2]: Ward. FlowJAX, `flowjax.bijections.Scan`. https://github.com/danielward27/flowjax
  """

  def __init__(self, conditioner, transformer, num_channels, block_weights, num_blocks,
               conditional=False, validate_args=False, dtype=tf.float32,
               name="coupling_scan"):
    parameters = dict(locals())
    if not checks.is_int_at_least(num_channels, 2):
      raise ValueError(f"num_channels must be an integer >= 2 (a coupling keeps one half "
                       f"and moves the other); got {num_channels!r}.")
    if not checks.is_int_at_least(num_blocks, 1):
      raise ValueError(f"num_blocks must be an integer >= 1; got {num_blocks!r}.")
    if not callable(block_weights):
      raise ValueError(f"block_weights must be a callable returning the stacked weights; "
                       f"got {block_weights!r}.")
    with tf.name_scope(name) as name:
      self._num_channels = int(num_channels)
      self._num_blocks = int(num_blocks)
      self._block_weights = block_weights
      super().__init__(
          conditional=conditional, conditioner=conditioner, transformer=transformer,
          forward_min_event_ndims=1, dtype=tf.as_dtype(dtype),
          validate_args=validate_args, parameters=parameters, name=name)

  @property
  def num_blocks(self):
    return self._num_blocks

  def _apply(self, x, conditional_input, direction):
    """(output, log-det of one event) through all blocks in `direction`."""
    self._check_conditional_input(conditional_input)
    x = checks.check_last_dim(x, self._num_channels, "CouplingScan")
    if self.validate_args:
      x = tf.debugging.assert_all_finite(x, "CouplingScan: input is not finite.")
    run = lambda flat, *context: self._loop(flat, context[0] if context else None,
                                            direction)
    out = batching.call_on_flat_batch(run, x, 1, conditional_input)
    return out[..., :-1], out[..., -1]

  def _loop(self, x, context, direction):
    """`[N, D + 1]`: the output and the log-det of a flat batch `x` of shape `[N, D]`."""
    num_blocks = self._num_blocks
    weights = [tf.convert_to_tensor(w, self.dtype) for w in self._block_weights()]
    for w in weights:
      if w.shape[0] is not None and w.shape[0] != num_blocks:
        raise ValueError(f"block_weights must have num_blocks = {num_blocks} entries on "
                         f"their leading axis; got shape {w.shape.as_list()}.")
    # TensorArrays hand the loop one block's slices; their gradient stacks the blocks'
    # gradients, where indexing the stacked tensors would add a full-size gradient per block.
    blocks = [tf.TensorArray(self.dtype, size=num_blocks, clear_after_read=False,
                             element_shape=w.shape[1:]).unstack(w) for w in weights]
    kept = self._num_channels // 2
    moved = self._num_channels - kept
    transform = getattr(self._transformer, direction)

    def params_of(x_a, block):
      slices = [b.read(block) for b in blocks]
      h = (self._conditioner(x_a, slices) if context is None
           else self._conditioner(x_a, slices, context))
      expected = moved * self._transformer.num_params
      if h.shape[-1] is not None and h.shape[-1] != expected:
        raise ValueError(f"The conditioner must return {moved} x "
                         f"{self._transformer.num_params} = {expected} values on its last "
                         f"axis; got shape {h.shape.as_list()}.")
      return tf.reshape(h, [-1, moved, self._transformer.num_params])

    def keep_shape(value):
      # A transformer may return a less specific static shape (the spline kernel's traced
      # function does: [None, None]); the loop needs the shape it was entered with.
      value.set_shape(x.shape)
      return value

    def inverse_block(step, z, log_det):
      # R z = [z[k:], z[:k]]: its first k entries z[k:2k] are kept, the rest moved.
      head, tail = tf.split(z, [kept, moved], -1)
      x_a, x_b = tail[..., :kept], tf.concat([tail[..., kept:], head], -1)
      x_b, block_log_det = transform(x_b, params_of(x_a, step))
      return step + 1, keep_shape(tf.concat([x_a, x_b], -1)), log_det + tf.reduce_sum(
          block_log_det, -1)

    def forward_block(step, y, log_det):
      y_a, y_b = tf.split(y, [kept, moved], -1)
      y_b, block_log_det = transform(y_b, params_of(y_a, num_blocks - 1 - step))
      # R^{-1} [a, b] = [b[-k:], a, b[:-k]] for b of D - k entries.
      out = tf.concat([y_b[..., moved - kept:], y_a, y_b[..., :moved - kept]], -1)
      return step + 1, keep_shape(out), log_det + tf.reduce_sum(block_log_det, -1)

    body = inverse_block if direction == "inverse" else forward_block
    _, out, log_det = tf.while_loop(
        lambda step, *_: step < num_blocks, body,
        (tf.constant(0), x, tf.zeros(tf.shape(x)[:1], self.dtype)),
        maximum_iterations=num_blocks)
    return tf.concat([out, log_det[:, tf.newaxis]], -1)

  def _forward_and_log_det(self, x, conditional_input):
    return self._apply(x, conditional_input, "forward")

  def _inverse_and_log_det(self, y, conditional_input):
    return self._apply(y, conditional_input, "inverse")


def half_rotation(num_channels):
  """The `tfb.Permute` permutation of `CouplingScan`'s rotation by `k = D // 2`.

  `tfb.Permute(p).inverse(x)` (data -> base) is `[x_k, ..., x_{D-1}, x_0, ..., x_{k-1}]`,
  so `p[i] = (i - k) mod D`.
  """
  num_channels = int(num_channels)
  return [(i - num_channels // 2) % num_channels for i in range(num_channels)]
