"""Checks of what a caller passes to a FlowModel: points and their context rows.

A wrong static shape is a clear `ValueError` at trace time, never a broadcast that
quietly returns numbers for the wrong points. Where a shape is only known when the call
runs (a `tf.function` traced with relaxed shapes, as Keras' `predict` and `evaluate`
retrace), the check runs then: an `InvalidArgumentError` eagerly and in graphs, and under
XLA a compile-time error from `tf.ensure_shape` or from reshaping the context to one
row per point.
"""

import tensorflow as tf

__all__ = ["checked_context", "checked_points"]


def checked_context(context, context_shape, context_dtype, x=None, sample_shape=None):
  """The context cast to `context_dtype`, after checking its static shape.

  Args:
    context: the caller's context, or None.
    context_shape: the shape of one context row, or None for an unconditional flow.
    context_dtype: the dtype the flow layers take.
    x: the points of a `log_prob` call, or None (sampling).
    sample_shape: the leading shape of `x` (`checked_points`).

  Returns:
    The context as a tensor of `context_dtype`, or None for an unconditional flow. Its
    rows must have shape `context_shape`; with `x` there must be one row per point of
    x, `[*sample_shape, *context_shape]` (no broadcasting). A context for integer
    labels keeps its whole numbers within the integer dtype's range; any other value
    (1.5, NaN, an int64 2**32 + 1) becomes the integer dtype's minimum (maximum if
    unsigned), a label every layer rejects, rather than being truncated or wrapped (-1
    would not do: TarFlow reads it as "no label").

  Raises:
    ValueError: for a context given to an unconditional flow, a missing one, or one of
      the wrong shape.
  """
  if context_shape is None:
    if context is not None:
      raise ValueError("This FlowModel has no context_shape, so it takes no context.")
    return None
  if context is None:
    raise ValueError(f"This FlowModel is conditional (context_shape={context_shape}): "
                     "pass context=.")
  context = tf.convert_to_tensor(context)
  shape, size = context.shape, len(context_shape)
  if shape.rank is not None:
    if shape.rank < size or not shape[shape.rank - size:].is_compatible_with(
        context_shape):
      raise ValueError(f"context rows must have shape context_shape={context_shape}; "
                       f"got a context of shape {shape}.")
    if x is not None and not shape[:shape.rank - size].is_compatible_with(sample_shape):
      raise ValueError(f"log_prob takes one context row per row of x: a context of "
                       f"shape {sample_shape.as_list() + list(context_shape)}; got "
                       f"{shape} for x of shape {x.shape}.")
  if x is not None and not (shape.is_fully_defined() and x.shape.is_fully_defined()):
    expected = tf.concat([tf.shape(x)[:sample_shape.rank],
                          tf.constant(list(context_shape), tf.int32)], 0)
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.shape(context), expected,
        message="log_prob takes one context row per row of x")]):
      # XLA drops the assertion: there, broadcasting to the expected shape fails to
      # compile for any other shape but one with 1s, and the reshape back to the
      # context's own shape then fails for those.
      context = tf.reshape(tf.broadcast_to(context, expected), tf.shape(context))
  context_dtype = tf.as_dtype(context_dtype)
  if not context_dtype.is_floating and (
      context.dtype.is_floating or context.dtype.min < context_dtype.min
      or context.dtype.max > context_dtype.max):
    # A cast would truncate 1.5 to 1 and wrap an int64 2**32 + 1 to 1.
    valid = tf.ones_like(context, tf.bool)
    if context.dtype.min < context_dtype.min:
      valid &= context >= tf.constant(context_dtype.min, context.dtype)
    if context.dtype.is_floating:
      # max + 1 (a power of two) is exact in floats, where max itself may round up.
      valid &= ((context < tf.constant(context_dtype.max + 1, context.dtype))
                & tf.equal(context, tf.floor(context)))  # false for NaN and inf too
    elif context.dtype.max > context_dtype.max:
      valid &= context <= tf.constant(context_dtype.max, context.dtype)
    invalid = context_dtype.min if context_dtype.min < 0 else context_dtype.max
    return tf.where(valid, tf.cast(context, context_dtype),
                    tf.fill(tf.shape(context), tf.constant(invalid, context_dtype)))
  return tf.cast(context, context_dtype)


def checked_points(x, event_shape):
  """`(x, sample_shape)`: `x` checked to end in `event_shape`, and its leading shape.

  Raises:
    ValueError: for a static shape that does not end in `event_shape`.
  """
  rank, size = x.shape.rank, len(event_shape)
  if rank is None or rank < size or not x.shape[rank - size:].is_compatible_with(
      event_shape):
    raise ValueError(f"log_prob takes points of event_shape {event_shape} after any "
                     f"sample shape, [..., {str(list(event_shape))[1:-1]}]; got x of "
                     f"shape {x.shape}.")
  sample_shape = x.shape[:rank - size]
  if not x.shape[rank - size:].is_fully_defined():
    x = tf.ensure_shape(x, sample_shape.concatenate(event_shape))
  return x, sample_shape
