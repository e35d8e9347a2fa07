"""Reusable numerical checks for bijectors (DESIGN.md, "Tests").

* `assert_bijective_and_log_det`: round trip, log-det against the autodiff Jacobian,
  `fldj(x) == -ildj(forward(x))`, finite values and finite input gradients.
* `assert_xla_matches_eager`: a function gives the same numbers eagerly and under
  `tf.function(jit_compile=True)`.

TFP bijectors cache `forward`/`inverse` results keyed by the input tensor object, so
`inverse(forward(x))` can return the cached `x` without computing anything. Every check
here feeds the second direction a `fresh` copy of the first direction's output.
"""

import collections

import numpy as np
import tensorflow as tf

__all__ = [
    "Tolerance", "TOLERANCES", "fresh", "jacobian_log_det",
    "assert_bijective_and_log_det", "assert_xla_matches_eager",
]

Tolerance = collections.namedtuple("Tolerance", ["inverse", "log_det"])

# Round trip and log-det-vs-Jacobian tolerances per dtype, used as rtol and atol alike.
TOLERANCES = {
    tf.float64: Tolerance(inverse=1e-10, log_det=1e-8),
    tf.float32: Tolerance(inverse=1e-5, log_det=1e-4),
}


def fresh(value):
  """A new tensor (or nest of tensors) with `value`'s numbers, unknown to any cache."""
  return tf.nest.map_structure(lambda v: tf.constant(np.asarray(v)), value)


def jacobian_log_det(bijector, x, event_ndims, **kwargs):
  """log|det d forward(x) / dx| per event, from the autodiff Jacobian, as float64 numpy.

  The event (the last `event_ndims` axes of `x`) is flattened to a vector of size D and
  the forward output of each event to a vector of the same size; the D x D Jacobian of
  every batch member comes from `tf.GradientTape.batch_jacobian`, its log|det| from
  `tf.linalg.slogdet` in float64. Keep D small (tens of entries).
  """
  x = tf.convert_to_tensor(x)
  batch_shape = x.shape[:x.shape.rank - event_ndims]
  event_size = x.shape[x.shape.rank - event_ndims:].num_elements()
  flat = tf.reshape(x, [-1, event_size])
  with tf.GradientTape() as tape:
    tape.watch(flat)
    y = bijector.forward(tf.reshape(flat, x.shape), **kwargs)
    y_flat = tf.reshape(y, [flat.shape[0], -1])
  assert y_flat.shape[-1] == event_size, (
      f"forward changed the event size from {event_size} to {y_flat.shape[-1]}")
  jacobian = tf.cast(tape.batch_jacobian(y_flat, flat), tf.float64)
  sign, log_abs_det = tf.linalg.slogdet(jacobian)
  assert np.all(sign.numpy() != 0), "the autodiff Jacobian is singular"
  return np.reshape(log_abs_det.numpy(), batch_shape)


def _assert_all_finite(name, value):
  value = np.asarray(value)
  assert np.all(np.isfinite(value)), f"{name} is not finite: {value}"


def assert_bijective_and_log_det(bijector, x, event_ndims, inverse_tol=None,
                                 log_det_tol=None, **kwargs):
  """Checks `bijector` at the forward input `x` whose events have rank `event_ndims`.

  Asserts, with tolerances from `TOLERANCES[x.dtype]` unless given:
    * inverse(forward(x)) == x;
    * fldj(x) == log|det| of the autodiff Jacobian of forward (float64 slogdet);
    * fldj(x) == -ildj(forward(x));
    * forward, inverse and both log-dets are finite, and so are the gradients of
      sum(forward(x)) + sum(fldj(x)) w.r.t. x and sum(inverse(y)) + sum(ildj(y)) w.r.t. y.

  `kwargs` (e.g. `conditional_input=c`) go to every bijector method.

  Returns:
    dict with numpy `y`, `x_back`, `fldj`, `ildj`, `jacobian_log_det`, for further checks.
  """
  x = tf.convert_to_tensor(x)
  tol = TOLERANCES[x.dtype]
  inverse_tol = tol.inverse if inverse_tol is None else inverse_tol
  log_det_tol = tol.log_det if log_det_tol is None else log_det_tol
  batch_rank = x.shape.rank - event_ndims

  y = bijector.forward(x, **kwargs)
  assert y.dtype == x.dtype, f"forward changed the dtype from {x.dtype} to {y.dtype}"
  y_event_ndims = y.shape.rank - batch_rank
  x_back = bijector.inverse(fresh(y), **kwargs)
  fldj = bijector.forward_log_det_jacobian(x, event_ndims=event_ndims, **kwargs)
  ildj = bijector.inverse_log_det_jacobian(fresh(y), event_ndims=y_event_ndims, **kwargs)
  for name, value in [("forward", y), ("inverse", x_back), ("fldj", fldj),
                      ("ildj", ildj)]:
    _assert_all_finite(name, value)
  batch_shape = x.shape[:batch_rank]
  fldj_np = np.broadcast_to(fldj.numpy(), batch_shape)
  ildj_np = np.broadcast_to(ildj.numpy(), batch_shape)

  np.testing.assert_allclose(x_back.numpy(), x.numpy(), rtol=inverse_tol,
                             atol=inverse_tol, err_msg="inverse(forward(x)) != x")
  reference = jacobian_log_det(bijector, fresh(x), event_ndims, **kwargs)
  np.testing.assert_allclose(fldj_np, reference, rtol=log_det_tol, atol=log_det_tol,
                             err_msg="fldj != log|det| of the autodiff Jacobian")
  np.testing.assert_allclose(fldj_np, -ildj_np, rtol=log_det_tol, atol=log_det_tol,
                             err_msg="fldj(x) != -ildj(forward(x))")

  x_in, y_in = fresh(x), fresh(y)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x_in, y_in])
    forward_loss = (tf.reduce_sum(bijector.forward(x_in, **kwargs)) + tf.reduce_sum(
        bijector.forward_log_det_jacobian(x_in, event_ndims=event_ndims, **kwargs)))
    inverse_loss = (tf.reduce_sum(bijector.inverse(y_in, **kwargs)) + tf.reduce_sum(
        bijector.inverse_log_det_jacobian(y_in, event_ndims=y_event_ndims, **kwargs)))
  grad_x = tape.gradient(forward_loss, x_in)
  grad_y = tape.gradient(inverse_loss, y_in)
  assert grad_x is not None and grad_y is not None, "no gradient w.r.t. the input"
  _assert_all_finite("d forward / dx", grad_x)
  _assert_all_finite("d inverse / dy", grad_y)
  return {"y": y.numpy(), "x_back": x_back.numpy(), "fldj": fldj_np, "ildj": ildj_np,
          "jacobian_log_det": reference}


def assert_xla_matches_eager(fn, *args, atol=1e-5, rtol=0.0):
  """Asserts `fn(*args)` (a tensor or nest of tensors) is the same eagerly and under XLA.

  Returns:
    The eager result as a nest of numpy arrays.
  """
  expected = tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
  actual = tf.nest.map_structure(lambda t: t.numpy(),
                                 tf.function(fn, jit_compile=True)(*args))
  tf.nest.assert_same_structure(expected, actual)
  for e, a in zip(tf.nest.flatten(expected), tf.nest.flatten(actual)):
    assert a.shape == e.shape, f"XLA shape {a.shape} != eager shape {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg="XLA != eager")
  return expected
