"""Checks of what a caller passes to a FlowModel: points and their context rows.

A wrong shape is a clear `ValueError` at trace time (also under XLA), never a
broadcast that quietly returns numbers for the wrong points.
"""

import tensorflow as tf

__all__ = ["checked_context", "sample_shape_of"]


def checked_context(context, context_shape, context_dtype, x=None, sample_shape=None):
  """The context cast to `context_dtype`, after checking its static shape.

  Args:
    context: the caller's context, or None.
    context_shape: the shape of one context row, or None for an unconditional flow.
    context_dtype: the dtype the flow layers take.
    x: the points of a `log_prob` call, or None (sampling).
    sample_shape: the leading shape of `x` (`sample_shape_of`).

  Returns:
    The context as a tensor of `context_dtype`, or None for an unconditional flow. Its
    rows must have shape `context_shape`; with `x` there must be one row per point of
    x, `[*sample_shape, *context_shape]` (no broadcasting). A float context for integer
    labels keeps its whole numbers; any other value becomes -1, a label every layer
    rejects, rather than being truncated.

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
  if context.dtype.is_floating and not tf.as_dtype(context_dtype).is_floating:
    whole = tf.math.is_finite(context) & tf.equal(context, tf.floor(context))
    context = tf.where(whole, context, -tf.ones_like(context))
  return tf.cast(context, context_dtype)


def sample_shape_of(x, event_shape):
  """The leading (sample) shape of `x`, after checking that it ends in `event_shape`."""
  rank, size = x.shape.rank, len(event_shape)
  if rank is None or rank < size or not x.shape[rank - size:].is_compatible_with(
      event_shape):
    raise ValueError(f"log_prob takes points of event_shape {event_shape} after any "
                     f"sample shape, [..., {str(list(event_shape))[1:-1]}]; got x of "
                     f"shape {x.shape}.")
  return x.shape[:rank - size]
