"""Conditioner networks on any sample shape: one flat batch axis in, restored out."""

import tensorflow as tf

__all__ = ["call_on_flat_batch"]


def call_on_flat_batch(fn, x, event_ndims, conditional_input=None):
  """`fn(x[, conditional_input])` for `x` of shape `[*sample_shape, *event_shape]`.

  Keras conditioners (Dense, Conv2D, MADE, Glow's conv net) want exactly one batch axis,
  while TFP calls a bijector with any sample shape: none for one event (`td.sample()`,
  `log_prob(one_point)`, each call inside `tf.vectorized_map`) and two for
  `td.sample([S, N])`. So `x` is reshaped to `[prod(sample_shape), *event_shape]`, the
  context (one row per point: `[*sample_shape, *context_shape]`) likewise, and the
  output `[prod(sample_shape), *out]` back to `[*sample_shape, *out]`. With one sample
  axis nothing is reshaped, so the conditioner sees exactly what it was given.

  Args:
    fn: callable `(x)` or `(x, conditional_input)` on one batch axis.
    x: tensor whose last `event_ndims` axes are the event.
    event_ndims: rank of one event.
    conditional_input: None, or the context with the same leading sample shape as `x`.

  Returns:
    `fn`'s output with `x`'s sample shape in front.

  Raises:
    ValueError: for a context whose leading shape is not `x`'s sample shape (flattened,
      its rows would be paired with other points).
  """
  rank = x.shape.rank
  if rank is None or rank - event_ndims == 1:
    if conditional_input is None:
      return fn(x)
    if rank is not None:  # a single row would otherwise broadcast, or fail in the net
      conditional_input = _checked_context(conditional_input, x, 1)
    return fn(x, conditional_input)
  sample_rank = rank - event_ndims
  event_shape = x.shape[sample_rank:]
  flat_shape = ([-1] + event_shape.as_list() if event_shape.is_fully_defined()
                else tf.concat([[-1], tf.shape(x)[sample_rank:]], 0))
  x_flat = tf.reshape(x, flat_shape)
  if conditional_input is None:
    out = fn(x_flat)
  else:
    conditional_input = _checked_context(conditional_input, x, sample_rank)
    context_shape = conditional_input.shape[sample_rank:]
    out = fn(x_flat, tf.reshape(
        conditional_input,
        [-1] + context_shape.as_list() if context_shape.is_fully_defined()
        else tf.concat([[-1], tf.shape(conditional_input)[sample_rank:]], 0)))
  out = tf.convert_to_tensor(out)
  out_shape = out.shape[1:]
  sample_shape = tf.shape(x)[:sample_rank]
  restored = tf.concat([sample_shape, out_shape.as_list() if out_shape.is_fully_defined()
                        else tf.shape(out)[1:]], 0)
  result = tf.reshape(out, restored)
  # Keep the static shape the reshape of a dynamic shape vector loses.
  result.set_shape(x.shape[:sample_rank].concatenate(out_shape))
  return result


def _checked_context(context, x, sample_rank):
  """`context` as a tensor, checked to have `x`'s sample shape in front."""
  context = tf.convert_to_tensor(context)
  sample_shape = x.shape[:sample_rank]
  rank = context.shape.rank
  if rank is not None and (rank < sample_rank or not context.shape[:sample_rank]
                           .is_compatible_with(sample_shape)):
    dims = ", ".join(str(d) for d in sample_shape.as_list())
    raise ValueError(
        f"A conditional bijector takes one context row per point: for points of sample "
        f"shape [{dims}] a context of shape [{dims}, *context_shape]; got a context of "
        f"shape {context.shape.as_list()}.")
  if sample_shape.is_fully_defined() and context.shape[:sample_rank].is_fully_defined():
    return context
  with tf.control_dependencies([tf.debugging.assert_equal(
      tf.shape(context)[:sample_rank], tf.shape(x)[:sample_rank],
      message="A conditional bijector takes one context row per point")]):
    return tf.identity(context)
