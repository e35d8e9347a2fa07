"""Argument checks shared by the bijectors and their layers (private)."""

import numbers

import tensorflow as tf

__all__ = ["common_dtype", "assert_finite", "check_last_dim", "is_int_at_least"]


def common_dtype(values, dtype_hint=tf.float32):
  """The floating dtype shared by `values` (Python numbers adopt it).

  Raises:
    TypeError: if two tensors have different floating dtypes.
  """
  dtype = None
  for value in values:
    value_dtype = getattr(value, "dtype", None)
    if value_dtype is None:
      continue
    value_dtype = tf.as_dtype(value_dtype)
    if dtype is not None and value_dtype != dtype:
      raise TypeError(
          f"Parameters must share one dtype; got {dtype.name} and {value_dtype.name}. "
          "Cast them to the same floating dtype.")
    dtype = value_dtype
  dtype = dtype or tf.as_dtype(dtype_hint)
  if not dtype.is_floating:
    raise TypeError(f"Parameters must be floating point; got {dtype.name}.")
  return dtype


def assert_finite(value, message):
  """Assertion ops (a list) that `value` holds no inf or NaN.

  Eagerly the check runs at once and the list is empty, so TFP never stores an eager
  result as a control dependency for later graph-mode calls.
  """
  op = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(value)), [message])
  return [] if op is None else [op]


def check_last_dim(x, expected, name):
  """Raises ValueError when the static last dimension of `x` differs from `expected`."""
  actual = x.shape[-1] if x.shape.rank else None
  if actual is not None and expected is not None and actual != expected:
    raise ValueError(
        f"{name} expects inputs with {expected} channels on the last axis; "
        f"got shape {x.shape.as_list()}.")


def is_int_at_least(value, minimum):
  """Whether `value` is an integer (not a bool, not 2.5 or inf) of at least `minimum`."""
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= minimum)
