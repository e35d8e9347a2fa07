"""The check of discrete inputs (pixel values, class labels): integers in [lower, upper)."""

import tensorflow as tf

__all__ = ["integers_in_range", "nan_where_not"]


def integers_in_range(values, upper, message, lower=0):
  """Whether each entry of `values` is an integer in `[lower, upper)`, asserted.

  Float entries must be whole numbers (`1.5`, NaN and inf fail); integer entries need
  only the range. Eagerly and in graphs, a failing entry raises `InvalidArgumentError`
  with `message`. XLA compiles assertions away, so callers also make the rows that
  hold a failing entry NaN (`nan_where_not`): a bad input is never a finite number.

  Args:
    values: a real tensor.
    upper: the exclusive upper bound (a Python int).
    message: what was expected and what to do, for the error.
    lower: the inclusive lower bound (a Python int).

  Returns:
    A bool tensor of `values`' shape, True where the entry is valid.
  """
  values = tf.convert_to_tensor(values)
  ok = (values >= lower) & (values < upper)
  if values.dtype.is_floating:
    ok &= tf.equal(values, tf.floor(values))
  with tf.control_dependencies([tf.debugging.assert_equal(
      tf.reduce_all(ok), True, message=message)]):
    return tf.identity(ok)


def nan_where_not(ok, value):
  """`value` with NaN where `ok` (broadcast against it from the left) is False."""
  ok = tf.reshape(ok, tf.concat([tf.shape(ok), tf.ones([value.shape.rank - ok.shape.rank],
                                                       tf.int32)], axis=0))
  return tf.where(ok, value, tf.constant(float("nan"), value.dtype))
