"""Rational-quadratic spline transformers against a numpy reference and float limits.

The reference below is written from Durkan et al. (https://arxiv.org/abs/1906.04032,
eqs. 4-5) and the documented parameter constraints, in float64 numpy, with its own bin
search (`np.take_along_axis`) and an inverse by bisection instead of the quadratic.

On round trips: where dy/dx is tiny (large parameters, or slopes near min_derivative)
many x share one float y, so no inverse can return x to 1e-5 in float32 (or 1e-10 in
float64) there. The round-trip tests therefore assert two things at every point:
* the inverse is exact up to float resolution: f(x' -+ 4 ulp) brackets y to 8 ulp(B)
  (the forward's own rounding error is a few ulp(B));
* |x' - x| <= tol wherever the float format makes that possible, i.e. where
  f(x - tol) and f(x + tol) are more than 8 ulp(B) away from y, and that this holds
  for most points (the share is asserted).
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.testing import bijector_checks
from tfp_flows import bijectors as tffb
from tfp_flows.numerics import spline as spline_lib

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
# The smallest share of round-trip points (grid, knots, +-B, +-1 and 2 ulp) at which
# float resolution allows the tolerance above; the measured shares are 0.07-0.12 higher.
MIN_SHARE = {(np.float32, 3.0): 0.4, (np.float32, 1e4): 0.2,
             (np.float64, 3.0): 0.85, (np.float64, 1e4): 0.6}


def _transformer(circular, **kwargs):
  return (tffb.CircularRationalQuadraticTransformer(**kwargs) if circular
          else tffb.RationalQuadraticTransformer(**kwargs))


def _reference_knots(params, num_bins, bound, min_size=1e-3):
  """x- and y-knots [..., K + 1]: -B + 2B cumsum(m + (1 - K m) softmax(u))."""
  def knots(u):
    e = np.exp(u - u.max(-1, keepdims=True))
    sizes = min_size + (1.0 - num_bins * min_size) * e / e.sum(-1, keepdims=True)
    start = np.zeros(u.shape[:-1] + (1,))
    return -bound + 2.0 * bound * np.concatenate([start, np.cumsum(sizes, -1)], -1)
  return knots(params[..., :num_bins]), knots(params[..., num_bins:2 * num_bins])


def _reference_forward(x, params, circular=False, num_bins=8, bound=3.0, m=1e-3):
  """(y, dy/dx) in float64 from eqs. 4-5 of the paper; identity outside [-B, B]."""
  x = np.asarray(x, np.float64)
  params = np.asarray(params, np.float64)
  xk, yk = _reference_knots(params, num_bins, bound, m)
  # d = m + softplus(u + c) with softplus(c) = 1 - m.
  d = m + np.logaddexp(0.0, params[..., 2 * num_bins:] + np.log(np.expm1(1.0 - m)))
  ones = np.ones(d.shape[:-1] + (1,))
  d = np.concatenate([d, d[..., :1]] if circular else [ones, d, ones], -1)
  if circular:
    x = np.where(np.abs(x) <= bound, x, np.mod(x + bound, 2.0 * bound) - bound)
  inside = np.abs(x) <= bound
  xs = np.where(inside, x, 0.0)
  k = np.clip(np.sum(xs[..., None] >= xk[..., 1:], -1), 0, num_bins - 1)[..., None]
  x0, x1 = [np.take_along_axis(xk, k + i, -1)[..., 0] for i in (0, 1)]
  y0, y1 = [np.take_along_axis(yk, k + i, -1)[..., 0] for i in (0, 1)]
  d0, d1 = [np.take_along_axis(d, k + i, -1)[..., 0] for i in (0, 1)]
  s = (y1 - y0) / (x1 - x0)
  xi = (xs - x0) / (x1 - x0)
  denominator = s + (d1 + d0 - 2.0 * s) * xi * (1.0 - xi)
  y = y0 + (y1 - y0) * (s * xi**2 + d0 * xi * (1.0 - xi)) / denominator
  slope = s**2 * (d1 * xi**2 + 2.0 * s * xi * (1.0 - xi) + d0 * (1.0 - xi)**2) / denominator**2
  return np.where(inside, y, x), np.where(inside, slope, 1.0)


def _reference_inverse(y, params, bound=3.0, steps=80):
  """x with reference_forward(x) = y, by bisection on [-B, B] (y inside)."""
  lo, hi = np.full(np.shape(y), -bound), np.full(np.shape(y), bound)
  for _ in range(steps):
    mid = 0.5 * (lo + hi)
    below = _reference_forward(mid, params, bound=bound)[0] < y
    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
  return 0.5 * (lo + hi)


def _random_params(rng, shape, num_params, scale, dtype=np.float64):
  return (scale * rng.normal(size=list(shape) + [num_params])).astype(dtype)


def _ulps(value, count, dtype):
  for _ in range(abs(count)):
    value = np.nextafter(value, dtype(np.inf) if count > 0 else dtype(-np.inf))
  return value


def _angle(value, bound):
  """value wrapped to [-B, B): differences of angles on the circle."""
  return np.mod(value + bound, 2.0 * bound) - bound


@pytest.mark.parametrize("circular", [False, True])
def test_forward_matches_the_numpy_reference(circular):
  rng = np.random.default_rng(0)
  t = _transformer(circular, bound=3.0)
  x = rng.uniform(-4.0, 4.0, size=[50, 6])
  params = _random_params(rng, x.shape, t.num_params, 3.0)
  y, log_det = t.forward(tf.constant(x), tf.constant(params))
  expected_y, slope = _reference_forward(x, params, circular)
  np.testing.assert_allclose(y.numpy(), expected_y, rtol=0, atol=1e-12)
  np.testing.assert_allclose(log_det.numpy(), np.log(slope), rtol=0, atol=1e-9)


def test_inverse_matches_bisection_of_the_reference():
  rng = np.random.default_rng(1)
  t = tffb.RationalQuadraticTransformer()
  y = rng.uniform(-3.0, 3.0, size=[400])
  params = _random_params(rng, y.shape, t.num_params, 1.0)
  x, log_det = t.inverse(tf.constant(y), tf.constant(params))
  expected = _reference_inverse(y, params)
  np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-10)
  np.testing.assert_allclose(log_det.numpy(), -np.log(_reference_forward(expected, params)[1]),
                             rtol=0, atol=1e-8)


def _round_trip_points(params, circular, dtype, num_bins=8, bound=3.0):
  """[rows, points]: a dense grid, every knot and +-B, each with +-1 and +-2 ulp."""
  rows = params.shape[0]
  xk, _ = _reference_knots(params.astype(np.float64), num_bins, bound)
  centres = [xk[:, j].astype(dtype) for j in range(num_bins + 1)]
  centres += [np.full(rows, dtype(bound)), np.full(rows, dtype(-bound))]
  points = [_ulps(c, n, dtype) for c in centres for n in (-2, -1, 0, 1, 2)]
  points.append(np.broadcast_to(np.linspace(-bound, bound, 41, dtype=dtype), [rows, 41]))
  x = np.concatenate([np.reshape(p, [rows, -1]) for p in points], axis=1)
  if circular:  # stay on [-B, B]; wrapping has its own test
    x = np.clip(x, dtype(-bound), dtype(bound))
  return x


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_round_trip_is_exact_to_float_resolution(circular, dtype, scale):
  rng = np.random.default_rng(2)
  t = _transformer(circular, bound=3.0)
  params = _random_params(rng, [60], t.num_params, scale, dtype)
  x = _round_trip_points(params, circular, dtype)
  params = np.broadcast_to(params[:, None, :], x.shape + (t.num_params,)).copy()
  forward = lambda v: t.forward(tf.constant(v, dtype), tf.constant(params))[0].numpy()
  # Differences as angles for the circle, plain differences on the line.
  diff = (lambda a, b: _angle(a - b, 3.0)) if circular else (lambda a, b: a - b)
  y = forward(x)
  x_back = t.inverse(tf.constant(y), tf.constant(params))[0].numpy()
  assert np.all(np.isfinite(x_back))

  y_tol = 8 * np.spacing(dtype(3.0))
  below, above = forward(_ulps(x_back, -4, dtype)), forward(_ulps(x_back, 4, dtype))
  bracketed = (diff(y, below) >= -y_tol) & (diff(above, y) >= -y_tol)
  assert np.all(bracketed), f"not a preimage: x={x[~bracketed]}, x'={x_back[~bracketed]}"

  tol = TOLERANCE[dtype]
  resolvable = ((diff(forward(x - dtype(tol)), y) < -y_tol)
                & (diff(forward(x + dtype(tol)), y) > y_tol))
  error = np.abs(diff(x_back, x))
  assert resolvable.mean() >= MIN_SHARE[dtype, scale], resolvable.mean()
  assert np.max(error[resolvable]) <= tol, np.max(error[resolvable])


@pytest.mark.parametrize("circular", [False, True])
def test_round_trip_with_moderate_params_is_exact_everywhere(circular):
  rng = np.random.default_rng(3)
  t = _transformer(circular, bound=3.0)
  params = _random_params(rng, [60], t.num_params, 1.0)
  x = _round_trip_points(params, circular, np.float64)
  params = np.broadcast_to(params[:, None, :], x.shape + (t.num_params,)).copy()
  y, log_det = t.forward(tf.constant(x), tf.constant(params))
  x_back, inverse_log_det = t.inverse(tf.constant(y.numpy()), tf.constant(params))
  error = np.abs(_angle(x_back.numpy() - x, 3.0))
  assert np.max(error) <= 1e-10, np.max(error)
  np.testing.assert_allclose(inverse_log_det.numpy(), -log_det.numpy(), rtol=0, atol=1e-8)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_log_det_matches_autodiff(circular, direction):
  rng = np.random.default_rng(4)
  t = _transformer(circular, bound=3.0)
  x = tf.constant(rng.uniform(-3.2 if not circular else -3.0, 3.0, size=[40, 5]))
  params = tf.constant(_random_params(rng, x.shape, t.num_params, 3.0))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y, log_det = getattr(t, direction)(x, params)
  derivative = tape.gradient(y, x).numpy()  # elementwise map: the gradient is dy/dx
  np.testing.assert_allclose(log_det.numpy(), np.log(derivative), rtol=0, atol=1e-8)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_parameter_gradients_match_finite_differences(circular, direction):
  # The inverse's gradient comes from the implicit function theorem, not from
  # differentiating the quadratic; central differences check both directions.
  rng = np.random.default_rng(16)
  t = _transformer(circular, bound=3.0)
  value = tf.constant(rng.uniform(-3.0, 3.0, size=[20]))
  params = tf.constant(_random_params(rng, [20], t.num_params, 1.5))
  weights = tf.constant(rng.normal(size=[2, 20]))

  def loss(params):
    out, log_det = getattr(t, direction)(value, params)
    return tf.reduce_sum(weights[0] * out + weights[1] * log_det)

  with tf.GradientTape() as tape:
    tape.watch(params)
    total = loss(params)
  gradient = tape.gradient(total, params).numpy()
  for _ in range(3):
    v = rng.normal(size=params.shape)
    eps = 1e-6
    difference = (loss(params + eps * v) - loss(params - eps * v)).numpy() / (2 * eps)
    np.testing.assert_allclose(np.sum(gradient * v), difference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("circular", [False, True])
def test_round_trip_has_zero_parameter_gradient(circular):
  # x = inverse(forward(x; theta); theta) for every theta, so d x / d theta = 0, and
  # fldj(x) + ildj(forward(x)) = 0 likewise; this ties the implicit inverse gradient
  # to the forward's explicit one.
  rng = np.random.default_rng(17)
  t = _transformer(circular, bound=3.0)
  x = tf.constant(rng.uniform(-3.0, 3.0, size=[30]))
  params = tf.constant(_random_params(rng, [30], t.num_params, 2.0))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(params)
    y, log_det = t.forward(x, params)
    x_back, inverse_log_det = t.inverse(y, params)
    # Entry i depends only on params[i]: the gradient of a sum is each row's Jacobian.
    sums = [tf.reduce_sum(v) for v in (y, x_back, log_det + inverse_log_det)]
  gradient = lambda value: tape.gradient(value, params).numpy()
  assert np.max(np.abs(gradient(sums[0]))) > 0.1  # y itself depends on the params
  np.testing.assert_allclose(gradient(sums[1]), 0.0, atol=1e-9)
  np.testing.assert_allclose(gradient(sums[2]), 0.0, atol=1e-7)


@pytest.mark.parametrize("circular", [False, True])
def test_forward_log_det_is_minus_inverse_log_det(circular):
  rng = np.random.default_rng(5)
  t = _transformer(circular, bound=3.0)
  x = rng.uniform(-3.0, 3.0, size=[200])
  params = tf.constant(_random_params(rng, x.shape, t.num_params, 2.0))
  y, log_det = t.forward(tf.constant(x), params)
  _, inverse_log_det = t.inverse(tf.constant(y.numpy()), params)
  np.testing.assert_allclose(inverse_log_det.numpy(), -log_det.numpy(), rtol=0, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tails_are_the_identity_including_infinities(dtype):
  t = tffb.RationalQuadraticTransformer(bound=3.0)
  just_outside = [np.nextafter(dtype(-3.0), dtype(-4.0)), np.nextafter(dtype(3.0), dtype(4.0))]
  x = np.array([-np.inf, -1e30, -7.0, *just_outside, 3.5, 1e30, np.inf], dtype)
  params = _random_params(np.random.default_rng(6), x.shape, t.num_params, 3.0, dtype)
  for direction in (t.forward, t.inverse):
    out, log_det = direction(tf.constant(x), tf.constant(params))
    np.testing.assert_array_equal(out.numpy(), x)
    np.testing.assert_array_equal(log_det.numpy(), np.zeros_like(x))


def test_spline_meets_the_tails_at_the_bounds():
  t = tffb.RationalQuadraticTransformer(bound=3.0)
  x = np.array([-3.0, 3.0, -3.0 - 1e-9, 3.0 + 1e-9])
  params = _random_params(np.random.default_rng(7), x.shape, t.num_params, 3.0)
  y, log_det = t.forward(tf.constant(x), tf.constant(params))
  np.testing.assert_array_equal(y.numpy()[:2], [-3.0, 3.0])
  np.testing.assert_allclose(y.numpy()[2:], x[2:], rtol=0, atol=0)
  # The boundary slope is 1, so the log-det is continuous (0) across +-B.
  np.testing.assert_allclose(log_det.numpy(), np.zeros(4), atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_a_batch_entirely_in_the_tails(direction):
  t = tffb.RationalQuadraticTransformer(bound=2.0)
  x = tf.constant(np.array([[-5.0, 2.5], [np.inf, -np.inf]], np.float32))
  params = tf.constant(_random_params(np.random.default_rng(8), [2, 2], t.num_params, 1e4,
                                      np.float32))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, params])
    out, log_det = getattr(t, direction)(x, params)
    loss = tf.reduce_sum(tf.where(tf.math.is_finite(out), out, 0.0)) + tf.reduce_sum(log_det)
  np.testing.assert_array_equal(out.numpy(), x.numpy())
  np.testing.assert_array_equal(log_det.numpy(), np.zeros([2, 2]))
  np.testing.assert_array_equal(tape.gradient(loss, x).numpy(),
                                [[1.0, 1.0], [0.0, 0.0]])
  np.testing.assert_array_equal(tape.gradient(loss, params).numpy(),
                                np.zeros([2, 2, t.num_params]))


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradients_are_finite_for_tails_infinities_and_huge_params(circular, dtype,
                                                                    direction):
  rng = np.random.default_rng(9)
  t = _transformer(circular, bound=3.0)
  inside = np.linspace(-3.0, 3.0, 25)
  outside = [] if circular else [-np.inf, -50.0, -3.0 - 1e-3, 3.0 + 1e-3, 50.0, np.inf]
  x = tf.constant(np.concatenate([inside, [-3.0, 3.0], outside]).astype(dtype))
  for scale in (3.0, 1e4):
    params = tf.constant(_random_params(rng, x.shape, t.num_params, scale, dtype))
    params = tf.concat([params[:5], -params[5:10], tf.abs(params[10:])], 0)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([x, params])
      out, log_det = getattr(t, direction)(x, params)
      finite_out = tf.where(tf.math.is_finite(out), out, tf.zeros_like(out))
      loss = tf.reduce_sum(finite_out) + tf.reduce_sum(log_det)
    assert np.all(np.isfinite(log_det.numpy()))
    assert np.all(np.isfinite(out.numpy()[np.isfinite(x.numpy())]))
    for wrt in (x, params):
      gradient = tape.gradient(loss, wrt).numpy()
      assert np.all(np.isfinite(gradient)), (scale, gradient)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_params_give_the_identity(circular, dtype):
  t = _transformer(circular, bound=3.0, num_bins=5)
  x = np.concatenate([np.linspace(-3.0, 3.0, 31), [] if circular else [-4.0, 9.0]])
  x = x.astype(dtype)
  params = tf.zeros(x.shape + (t.num_params,), dtype)
  for direction in (t.forward, t.inverse):
    out, log_det = direction(tf.constant(x), params)
    assert out.dtype == dtype and log_det.dtype == dtype
    np.testing.assert_allclose(out.numpy(), x, rtol=0, atol=4 * np.spacing(dtype(3.0)))
    np.testing.assert_allclose(log_det.numpy(), np.zeros_like(x), rtol=0,
                               atol=4 * np.finfo(dtype).eps)


def test_circular_spline_is_periodic_and_smooth_across_the_boundary():
  rng = np.random.default_rng(10)
  t = tffb.CircularRationalQuadraticTransformer()  # bound pi
  params = tf.constant(_random_params(rng, [30], t.num_params, 2.0))
  x = rng.uniform(-math.pi, math.pi, size=[30])
  y, log_det = t.forward(tf.constant(x), params)
  for shift in (-4 * math.pi, 2 * math.pi, 6 * math.pi):
    shifted_y, shifted_log_det = t.forward(tf.constant(x + shift), params)
    np.testing.assert_allclose(_angle(shifted_y.numpy() - y.numpy(), math.pi), 0.0,
                               atol=1e-12)
    np.testing.assert_allclose(shifted_log_det.numpy(), log_det.numpy(), atol=1e-9)
  # -B and B are one point and map to one point; the slope agrees on both sides.
  ends = tf.constant(np.stack([np.full(30, -math.pi), np.full(30, math.pi)], -1))
  end_params = tf.stack([params, params], 1)
  end_y, end_log_det = t.forward(ends, end_params)
  np.testing.assert_allclose(end_y.numpy(), ends.numpy(), atol=1e-15)
  np.testing.assert_allclose(end_log_det.numpy()[:, 0], end_log_det.numpy()[:, 1],
                             atol=1e-12)
  near = tf.constant(np.stack([np.full(30, -math.pi + 1e-12), np.full(30, math.pi - 1e-12)],
                              -1))
  with tf.GradientTape() as tape:
    tape.watch(near)
    near_y, _ = t.forward(near, end_params)
  slope = tape.gradient(near_y, near).numpy()
  np.testing.assert_allclose(slope[:, 0], slope[:, 1], rtol=1e-6)
  np.testing.assert_allclose(np.log(slope[:, 0]), end_log_det.numpy()[:, 0], atol=1e-6)
  assert np.min(slope) > 0


def test_circular_spline_is_monotone_and_onto():
  rng = np.random.default_rng(11)
  t = tffb.CircularRationalQuadraticTransformer(num_bins=6)
  x = np.linspace(-math.pi, math.pi, 2001)
  params = np.broadcast_to(_random_params(rng, [1], t.num_params, 3.0), [2001, 18])
  y, log_det = t.forward(tf.constant(x), tf.constant(params))
  assert np.all(np.diff(y.numpy()) >= 0)
  assert y.numpy()[0] == -math.pi and y.numpy()[-1] == math.pi
  assert np.all(np.isfinite(log_det.numpy()))


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("dtype,value_tol,log_det_tol", [
    # float32: XLA's exp, log and matmul differ from Eigen's in the last bits, and the
    # spline amplifies a last-bit change of a knot by dy/dx (values) or by
    # d log f' / dx (log-dets), so DESIGN.md's float32 tolerances apply there.
    (np.float32, 1e-5, 1e-4), (np.float64, 1e-12, 1e-12)])
def test_xla_equals_eager(circular, dtype, value_tol, log_det_tol):
  rng = np.random.default_rng(12)
  t = _transformer(circular, bound=3.0)
  x = tf.constant(rng.uniform(-3.5, 3.5, size=[64, 3]).astype(dtype))
  y = tf.constant(rng.uniform(-3.5, 3.5, size=[64, 3]).astype(dtype))
  params = tf.constant(_random_params(rng, [64, 3], t.num_params, 1.0, dtype))

  def both_directions(x, y, params):
    return (*t.forward(x, params), *t.inverse(y, params))

  eager = [v.numpy() for v in both_directions(x, y, params)]
  xla = [v.numpy() for v in tf.function(both_directions, jit_compile=True)(x, y, params)]
  for name, e, a, tol in zip(["y", "fldj", "x", "ildj"], eager, xla,
                             [value_tol, log_det_tol] * 2):
    assert np.all(np.isfinite(e)), name
    np.testing.assert_allclose(a, e, rtol=0, atol=tol, err_msg=f"XLA != eager for {name}")


@pytest.mark.parametrize("circular", [False, True])
def test_inside_a_coupling_log_det_matches_the_jacobian(circular):
  rng = np.random.default_rng(13)
  t = _transformer(circular, num_bins=4, bound=2.0)
  weight = tf.constant(rng.normal(size=[3, 3 * t.num_params]))

  def conditioner(x_a):  # a tanh-linear net whose outputs reach +-3
    return 3.0 * tf.tanh(tf.tensordot(x_a, weight, 1))

  bijector = tffb.Coupling(conditioner, t, num_channels=6, dtype=tf.float64)
  x = rng.normal(size=[5, 6]) * 1.3
  if circular:
    x = np.clip(x, -1.99, 1.99)
  else:
    x[0, 4] = 2.5  # one entry in a tail
  checks = bijector_checks.assert_bijective_and_log_det(bijector, tf.constant(x),
                                                        event_ndims=1)
  np.testing.assert_array_equal(checks["y"][:, :3], x[:, :3])
  assert np.max(np.abs(checks["y"][:, 3:] - x[:, 3:])) > 1e-2


def test_a_flows_layers_share_one_trace_of_the_kernel():
  """Three couplings, two batch sizes under XLA with their gradients, then graph-mode
  calls of other batch sizes: one trace of the inverse kernel, whose values in a graph
  equal the eager kernel's bit for bit."""
  # A configuration no other test uses, so that its trace count starts at zero here.
  t = tffb.RationalQuadraticTransformer(num_bins=5, bound=2.5, min_derivative=0.0123)
  rng = np.random.default_rng(16)
  weights = [tf.Variable(rng.normal(size=[2, 2 * t.num_params]).astype(np.float32))
             for _ in range(3)]
  # Each layer holds its own, equal, transformer, as a flow's layers do.
  chain = tfp.bijectors.Chain([
      tffb.Coupling(lambda x_a, w=w: tf.tanh(tf.tensordot(x_a, w, 1)),
                    tffb.RationalQuadraticTransformer(**t.get_config()), num_channels=4)
      for w in weights])

  @tf.function(jit_compile=True)
  def value_and_gradient(y):
    with tf.GradientTape() as tape:
      log_det = tf.reduce_sum(chain.inverse_log_det_jacobian(y, event_ndims=1))
    return log_det, tape.gradient(log_det, weights)

  traced = spline_lib._traced_kernel(  # pylint: disable=protected-access
      t._spline, spline_lib._INVERSE, tf.float32, 2)  # pylint: disable=protected-access
  for batch in (3, 5):
    log_det, gradients = value_and_gradient(tf.constant(rng.normal(size=[batch, 4]),
                                                        tf.float32))
    assert np.isfinite(log_det.numpy()) and all(
        np.all(np.isfinite(g.numpy())) for g in gradients)
  assert traced.experimental_get_tracing_count() == 1  # the layers' equal splines share it
  graph_inverse = tf.function(t.inverse)
  for batch in (7, 4):
    y = tf.constant(rng.uniform(-3.0, 3.0, size=[batch, 2]), tf.float32)
    params = tf.constant(_random_params(rng, [batch, 2], t.num_params, 1.0, np.float32))
    for got, want in zip(graph_inverse(y, params), t.inverse(y, params)):
      np.testing.assert_array_equal(got.numpy(), want.numpy())
  assert traced.experimental_get_tracing_count() == 1


def test_batch_shapes_and_config():
  t = tffb.RationalQuadraticTransformer(num_bins=3, bound=1.5, min_derivative=1e-2)
  assert t.num_params == 8
  assert tffb.CircularRationalQuadraticTransformer(num_bins=3).num_params == 9
  config = t.get_config()
  assert config == {"num_bins": 3, "bound": 1.5, "min_bin_width": 1e-3,
                    "min_bin_height": 1e-3, "min_derivative": 1e-2}
  assert tffb.RationalQuadraticTransformer(**config) == t
  assert t != tffb.CircularRationalQuadraticTransformer(**config)
  x = tf.constant(np.random.default_rng(14).uniform(-2, 2, size=[2, 3, 4]), tf.float32)
  params = tf.constant(_random_params(np.random.default_rng(15), [2, 3, 4], 8, 2.0,
                                      np.float32))
  y, log_det = t.forward(x, params)
  assert y.shape == log_det.shape == (2, 3, 4) and y.dtype == tf.float32
  flat_y, _ = t.forward(tf.reshape(x, [-1]), tf.reshape(params, [-1, 8]))
  np.testing.assert_array_equal(flat_y.numpy(), tf.reshape(y, [-1]).numpy())


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_bins=0), r"num_bins must be an integer >= 1; got 0"),
    (dict(num_bins=2.5), r"num_bins must be an integer >= 1; got 2.5"),
    (dict(num_bins=True), r"num_bins must be an integer >= 1; got True"),
    (dict(bound=0.0), r"bound must be a finite positive number; got 0.0"),
    (dict(bound=float("inf")), r"bound must be a finite positive number; got inf"),
    (dict(min_bin_width=0.0), r"min_bin_width must be positive; got 0.0"),
    (dict(min_bin_height=-1e-3), r"min_bin_height must be positive; got -0.001"),
    (dict(num_bins=10, min_bin_width=0.1),
     r"min_bin_width \* num_bins must be below 1.*min_bin_width=0.1 with num_bins=10"),
    (dict(min_derivative=0.0), r"min_derivative must be in \(0, 1\); got 0.0"),
    (dict(min_derivative=1.0), r"min_derivative must be in \(0, 1\); got 1.0"),
])
@pytest.mark.parametrize("circular", [False, True])
def test_constructor_errors(kwargs, match, circular):
  with pytest.raises(ValueError, match=match):
    _transformer(circular, **kwargs)


def _tf_reference(x, params, shift=0, num_bins=8, bound=3.0, m=1e-3):
  """(y, log dy/dx) of the linear-tail spline, written plainly in TF for autodiff.

  Softmax, cumsum, softplus and `tf.gather` of the bin's knots, eqs. 4-5 as printed in
  the paper; `x` is [N]. The bin is the one containing x, moved by `shift` bins: at a
  knot the log-det's derivatives jump, and a knot rounds differently here and in the
  kernel, so there the neighbouring bin (evaluated at xi = 0 or 1) is also a valid
  reference.
  """
  k = num_bins

  def knots(u):
    sizes = m + (1.0 - k * m) * tf.nn.softmax(u, axis=-1)
    start = tf.zeros_like(sizes[..., :1])
    return -bound + 2.0 * bound * tf.concat([start, tf.cumsum(sizes, axis=-1)], -1)

  xk, yk = knots(params[..., :k]), knots(params[..., k:2 * k])
  ones = tf.ones_like(params[..., :1])
  d = tf.concat([ones, m + tf.nn.softplus(params[..., 2 * k:] + math.log(math.expm1(1.0 - m))),
                 ones], -1)
  inside = tf.abs(x) <= bound
  xs = tf.where(inside, x, tf.zeros_like(x))
  index = tf.reduce_sum(tf.cast(xs[:, None] >= xk[:, 1:-1], tf.int32), -1)[:, None]
  index = tf.clip_by_value(index + shift, 0, k - 1)
  pick = lambda t, shift: tf.gather(t, index + shift, batch_dims=1)[:, 0]
  x0, x1, y0, y1, d0, d1 = [pick(t, i) for t in (xk, yk, d) for i in (0, 1)]
  s = (y1 - y0) / (x1 - x0)
  xi = (xs - x0) / (x1 - x0)
  denominator = s + (d1 + d0 - 2.0 * s) * xi * (1.0 - xi)
  y = y0 + (y1 - y0) * (s * xi**2 + d0 * xi * (1.0 - xi)) / denominator
  slope = s**2 * (d1 * xi**2 + 2.0 * s * xi * (1.0 - xi) + d0 * (1.0 - xi)**2) / denominator**2
  return tf.where(inside, y, x), tf.where(inside, tf.math.log(slope), tf.zeros_like(x))


def _reference_gradients(direction, x, params, weights, shift):
  """Gradient of sum(w0 out + w1 log_det) w.r.t. (input, params) from `_tf_reference`.

  `x` is the point on the x side: the input of the forward, the output of the inverse.
  Forward: autodiff. Inverse: x = f^{-1}(y) through the reference forward's autodiff
  partials at x: dx/dy = 1 / f_x, dx/dtheta = -f_theta / f_x, log_det = -L(x, theta).
  """
  x = tf.constant(x, tf.float64)
  theta = tf.constant(params, tf.float64)
  w0, w1 = [tf.constant(w, tf.float64) for w in weights]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, theta])
    y, log_det = _tf_reference(x, theta, shift)
    f_sum, l_sum = tf.reduce_sum(y), tf.reduce_sum(log_det)
  # Entry n depends on x[n] and theta[n] only, so gradients of sums are partials.
  f_x, f_theta = tape.gradient(f_sum, [x, theta])
  l_x, l_theta = tape.gradient(l_sum, [x, theta])
  if direction == "forward":
    return (w0 * f_x + w1 * l_x).numpy(), (w0[:, None] * f_theta
                                            + w1[:, None] * l_theta).numpy()
  adjoint = (w0 - w1 * l_x) / f_x
  return adjoint.numpy(), (-adjoint[:, None] * f_theta - w1[:, None] * l_theta).numpy()


def _gradient_points(rng, dtype, direction):
  """(x [N], params [N, 23], large [N]): inputs inside bins, at knots (the y-knots for
  the inverse), at +-B and in the tails, for params of scale 1.5 (rows 0-11), 1e4
  (rows 12-23) and rows of +-1e4 (`large` marks the last two kinds)."""
  rows = [_random_params(rng, [12], 23, 1.5), _random_params(rng, [12], 23, 1e4),
          1e4 * np.sign(rng.normal(size=[6, 23]))]
  params = np.concatenate(rows).astype(dtype)
  knots = _reference_knots(params.astype(np.float64), 8, 3.0)[direction == "inverse"]
  columns = [rng.uniform(-3.0, 3.0, size=[len(params), 4]),  # inside bins
             knots[:, 1:-1:2],  # interior knots
             np.tile([-3.0, 3.0, -3.5, 50.0], [len(params), 1])]  # ends and tails
  x = np.concatenate(columns, axis=1).astype(dtype)
  large = np.repeat(np.arange(len(params)) >= 12, x.shape[1])
  return x.reshape(-1), np.repeat(params, x.shape[1], axis=0), large


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_closed_form_gradient_matches_autodiff_of_a_plain_reference(dtype, direction):
  # Errors relative to 1 + each point's largest reference gradient entry: 1e-10 in
  # float64, 1e-4 in float32 (against the same float64 reference at the float32
  # inputs), with the reference at the same point and in the same bin. Two exceptions,
  # both from where the bin lies, which is known only to the rounding of its knots
  # (the kernel's and the reference's differ by a few ulp): at a knot the log-det's
  # derivatives jump, so there each entry must lie within the tolerance of the range
  # the reference spans over both bins and x -+ 16 ulp(B); and for parameters of 1e4
  # the gradient moves sharply within a bin (slopes 1e-3 next to 1e4 over widths of
  # 6e-3), so there the same range over x -+ 16 ulp(B) applies inside bins too.
  rng = np.random.default_rng(18)
  t = tffb.RationalQuadraticTransformer()
  x, params, large = _gradient_points(rng, dtype, direction)
  weights = rng.normal(size=[2, len(x)])
  value, theta = tf.constant(x), tf.constant(params)
  with tf.GradientTape() as tape:
    tape.watch([value, theta])
    out, log_det = getattr(t, direction)(value, theta)
    loss = tf.reduce_sum(weights[0].astype(dtype) * out + weights[1].astype(dtype) * log_det)
  ours = np.concatenate([g.numpy().reshape(len(x), -1).astype(np.float64)
                         for g in tape.gradient(loss, [value, theta])], axis=1)
  assert np.all(np.isfinite(ours))
  # The reference runs on the x side: the input of the forward, the output of the inverse.
  x_side = x.astype(np.float64) if direction == "forward" else out.numpy().astype(np.float64)
  xk, _ = _reference_knots(params.astype(np.float64), 8, 3.0)
  near_knot = np.min(np.abs(x_side[:, None] - xk[:, 1:-1]), axis=1) <= 1e-6
  assert 0.15 < np.mean(near_knot) < 0.5

  def reference(shift=0, move=0.0):
    g_value, g_params = _reference_gradients(direction, x_side + move,
                                             params.astype(np.float64), weights, shift)
    return np.concatenate([g_value[:, None], g_params], axis=1)

  exact = reference()
  scale = 1.0 + np.max(np.abs(exact), axis=1, keepdims=True)
  tol = 1e-10 if dtype == np.float64 else 1e-4
  strict = ~near_knot & ~large
  error = np.max(np.abs(ours - exact) / scale, axis=1)
  assert np.max(error[strict]) <= tol, np.max(error[strict])
  delta = 16 * float(np.spacing(dtype(3.0)))
  candidates = [exact]
  for shift in (-1, 0, 1):
    for move in (-delta, 0.0, delta):
      if shift or move:
        allowed = (near_knot | (shift == 0)) & (near_knot | large | (move == 0.0))
        candidates.append(np.where(allowed[:, None], reference(shift, move), exact))
  candidates = np.stack(candidates)
  low, high = np.min(candidates, 0), np.max(candidates, 0)
  outside = np.maximum(np.maximum(low - ours, ours - high), 0.0)
  error = np.max(outside / scale, axis=1)
  if dtype == np.float64:
    assert np.max(error) <= tol, np.max(error)
  else:
    assert np.max(error[~(large & near_knot)]) <= tol, np.max(error[~(large & near_knot)])
    # At a knot with parameters of 1e4 the float32 input sits up to 0.5 ulp off the
    # exact knot, on features narrower than that: the reference itself moves by more
    # than its own size over x -+ 16 ulp(B) there (asserted), so only finiteness
    # (above) is asserted.
    spread = np.max((high - low) / scale, axis=1)
    assert np.median(spread[large & near_knot]) > 1.0
  # The allowance is needed only where claimed: most large-parameter points inside
  # bins still match the exact reference.
  assert np.mean(np.max(np.abs(ours - exact) / scale, axis=1)[large & ~near_knot] <= tol) > 0.8


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_closed_form_gradient_has_no_nan_at_infinities_and_huge_params(circular, direction):
  # An infinite angle is no point of the circle (NaN by design), so the circle gets
  # its end points instead.
  t = _transformer(circular)
  ends = [-3.0, 3.0] if circular else [-np.inf, np.inf]
  x = tf.constant(ends + [-3.0, 3.0, 0.0, 1.0, -2.9], tf.float32)
  for sign in (1.0, -1.0):
    params = sign * 1e4 * tf.sign(tf.constant(
        np.random.default_rng(19).normal(size=[7, t.num_params]), tf.float32))
    with tf.GradientTape() as tape:
      tape.watch([x, params])
      out, log_det = getattr(t, direction)(x, params)
      loss = tf.reduce_sum(tf.where(tf.math.is_finite(out), out, 0.0) + log_det)
    for gradient in tape.gradient(loss, [x, params]):
      assert np.all(np.isfinite(gradient.numpy()))
