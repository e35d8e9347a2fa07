"""Argument and result checks shared by every layer of the package (pure TensorFlow).

Static checks (`int_at_least`, `one_of`, `positive_float`) raise `ValueError` quoting the
bad value at construction. Tensor checks return assertion ops or masked tensors. The
non-convergence rule of the iterative solvers lives in `nan_unless`: a row that did not
converge is NaN in every mode, and with `validate_args` an assertion also raises where
TensorFlow can raise (eagerly and in graphs; XLA drops assertions, so there the NaN is the
signal).
"""

import numbers

import tensorflow as tf

__all__ = ["assert_finite", "check_last_dim", "common_dtype", "int_at_least",
           "is_int_at_least", "nan_unless", "one_of", "positive_float"]


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
  """`x`, checked to have `expected` entries on its last axis.

  A static last dimension that differs is a ValueError. One unknown when tracing (a
  `tf.function` with a relaxed signature) is checked when the graph runs, and by XLA
  when it compiles for the actual shape: without the check, a `[N, 1]` input would
  broadcast against `[C]` parameters into a wrong but finite answer.
  """
  if expected is None or x.shape.rank == 0:
    return x
  message = f"{name} expects inputs with {expected} channels on the last axis"
  if x.shape.rank is None:
    # The reshape fails unless the last axis has `expected` entries, also under XLA,
    # which drops the assertion.
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.shape(x)[-1], expected, message=message)]):
      return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [expected]], 0))
  actual = x.shape[-1]
  if actual is None:
    return tf.ensure_shape(x, x.shape[:-1].concatenate([expected]))
  if actual != expected:
    raise ValueError(f"{message}; got shape {x.shape.as_list()}.")
  return x


def is_int_at_least(value, minimum):
  """Whether `value` is an integer (not a bool, not 2.5 or inf) of at least `minimum`."""
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= minimum)


def int_at_least(name, value, minimum=1, why=""):
  """`value` as an int, or a ValueError naming `name` and quoting `value`.

  Bools, 2.5 and inf are not counts. `why` (optional) ends the message with the reason.
  """
  if not is_int_at_least(value, minimum):
    word = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    raise ValueError(f"{name} must be {word}{why}; got {value!r}.")
  return int(value)


def positive_float(name, value):
  """`value` as a float > 0 (finite or not), or a ValueError quoting it."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not float(value) > 0.0):
    raise ValueError(f"{name} must be positive; got {value!r}.")
  return float(value)


def one_of(name, value, choices):
  """`value` if it is one of `choices`, else a ValueError listing them."""
  if not isinstance(value, str) or value not in choices:
    choices = tuple(choices)
    spelled = (f", so {name} must be {choices[0]!r} or {choices[1]!r}"
               if len(choices) == 2 else "")
    raise ValueError(f"{name} must be one of {choices}{spelled}; got {value!r}.")
  return value


def nan_unless(ok, values, validate_args, message):
  """`values` with the rows where `ok` is False set to NaN; asserts `ok` if validating.

  The rule for every iterative solve (fixed point, ODE, the adjoint): an unconverged
  row is never returned as an answer. Its entries are NaN in every mode, so other rows
  keep their values and the failure reaches the loss or the caller as NaN even under
  XLA, which compiles assertions away. With `validate_args` an `InvalidArgumentError`
  carrying `message` is raised as well, eagerly and in graphs.

  Args:
    ok: bool tensor `[N]`, or a scalar for all rows (the batch shares one result).
    values: a tensor `[N, ...]` or a list of them (scalars with a scalar `ok`).
    validate_args: also attach the assertion.
    message: what failed and what to do about it.

  Returns:
    A tensor or a list, as `values` was given.
  """
  single = tf.is_tensor(values)
  parts = [values] if single else list(values)
  if validate_args:
    with tf.control_dependencies([tf.debugging.assert_equal(
        ok, tf.ones_like(ok), message=message)]):
      parts = [tf.identity(part) for part in parts]
  masked = []
  for part in parts:
    keep = ok if ok.shape.rank == 0 else tf.reshape(ok, [-1] + [1] * (part.shape.rank - 1))
    masked.append(tf.where(keep, part, tf.constant(float("nan"), part.dtype)))
  return masked[0] if single else masked
