"""The rational-quadratic spline kernel of Neural Spline Flows and its closed-form gradient.

`RationalQuadraticSpline` maps (input, unnormalised parameters) to (output, log-det) in
one pass, forward or inverse, on the real line (a spline on [-B, B], the identity
outside) or on the circle (periodic on [-B, B]); the transformers of
`tfp_flows.bijectors.spline` wrap it. It finds the bin with a comparison count against
the knots, picks the bin's knots with one-hot contractions (no Python loop over tensors,
and it broadcasts like the inputs) and evaluates eqs. 4-5 of Durkan et al., or for the
inverse solves the quadratic from the nearer knot. Its gradient is written out in
closed form (`_forward_gradient`, `_inverse_gradient`): the partial derivatives of the
output and the log-det with respect to the input and to the bin's knots and slopes,
carried to the K unnormalised widths, heights and slopes through the softmax,
cumulative-sum and softplus constraints as one elementwise expression with 0/1 masks,
where autodiff would differentiate every constraint, pick and branch separately (and the
inverse's square root and branches too).

Why not `tfp.bijectors.RationalQuadraticSpline` built from the same constrained
parameters: it is slower (it runs `searchsorted` and `tf.gather`, whose gradients are
scatters, and its log-prob direction computes the inverse twice), and its float32
round trip errs by up to 5e-4 next to knots or returns NaN, where this kernel's stays
within 1e-6. Timings are in `benchmarks/RESULTS.md`.
"""

import collections
import functools
import math
import numbers

import numpy as np
import tensorflow as tf

from tfp_flows.numerics import checks

__all__ = ["RationalQuadraticSpline"]


def _slope(xi, s, d_lo, d_hi):
  """(log f'(xi), A, C, D) of eq. 5 from sums of positive terms only.

  A = d_k (1 - xi) + s xi,   C = s (1 - xi) + d_{k+1} xi,   D = (1 - xi) C + xi A
  y = y_k + h xi A / D = y_{k+1} - h (1 - xi) C / D,   f' = (s / D)^2 ((1 - xi) A + xi C)
  Sums of positive terms lose no digits to cancellation even for slopes 1e-3 next to
  1e4, and with s = d_k = d_{k+1} = 1 they give A = C = D = 1 exactly. The formulas are
  unchanged by the reflection xi -> 1 - xi, d_k <-> d_{k+1} (which swaps A and C).
  """
  one_minus = 1.0 - xi
  a = d_lo * one_minus + s * xi
  c = s * one_minus + d_hi * xi
  denominator = one_minus * c + xi * a
  log_det = tf.math.log(one_minus * a + xi * c) + 2.0 * tf.math.log(s / denominator)
  return log_det, a, c, denominator


def _near_root(r, s, d_near, d_far):
  """The root xi in [0, 1] of r = xi A / D for r in [0, 1/2] (eq. 4 read backwards).

  r (1 - xi) C = (1 - r) xi A is the quadratic a xi^2 + b xi + c = 0 with
  a = r (d_{k+1} - s) + (1 - r)(s - d_k), b = (1 - r) d_k - r (d_{k+1} - 2s), c = -s r.
  The root is 2c / (-b - sqrt(b^2 - 4ac)) = (-b + sqrt(b^2 - 4ac)) / 2a: for b >= 0 the
  first form adds terms of one sign, for b < 0 (then a > 0) the second does. Only the
  selected numerator and denominator are divided, so neither branch makes inf or NaN.
  """
  r_bar = 1.0 - r
  qa = r * (d_far - s) + r_bar * (s - d_near)
  qb = r_bar * d_near - r * (d_far - 2.0 * s)
  qc = -s * r
  root = tf.sqrt(tf.maximum(qb * qb - 4.0 * qa * qc, 0.0))
  positive_b = qb >= 0.0
  return tf.minimum(tf.where(positive_b, 2.0 * qc, root - qb)
                    / tf.where(positive_b, -qb - root, 2.0 * qa), 1.0)


def _forward_in_bin(x, lo, hi):
  """(y, log dy/dx, xi) for x in the bin with knots `lo` = (x_k, y_k, d_k), `hi` likewise."""
  (x_lo, y_lo, d_lo), (x_hi, y_hi, d_hi) = lo, hi
  w, h = x_hi - x_lo, y_hi - y_lo
  # x_lo <= x <= x_hi by the bin search and monotone rounding, so xi is in [0, 1].
  xi = (x - x_lo) / w
  log_det, a, c, denominator = _slope(xi, h / w, d_lo, d_hi)
  # eq. 4 from the nearer knot, so that rounding only touches a small correction and
  # each knot is met exactly.
  near_lo = xi <= 0.5
  step = tf.where(near_lo, xi * a, (xi - 1.0) * c)
  return tf.where(near_lo, y_lo, y_hi) + h * step / denominator, log_det, xi, 1.0 - xi


def _inverse_in_bin(y, lo, hi):
  """(x, log dx/dy, xi, 1 - xi) for y in the bin with knots `lo`, `hi` (Appendix A)."""
  (x_lo, y_lo, d_lo), (x_hi, y_hi, d_hi) = lo, hi
  w, h = x_hi - x_lo, y_hi - y_lo
  # The bin is solved from the knot nearer to y: reflecting it (xi -> 1 - xi,
  # r -> 1 - r, d_k <-> d_{k+1}) leaves the spline's form unchanged, and from the near
  # knot the root keeps its relative precision. From the far knot,
  # a = s - d_k + r (d_k + d_{k+1} - 2 s) cancels d_k against r d_k and loses every digit
  # when d_k is 1e4 and r is near 1.
  above, below = y - y_lo, y_hi - y
  flip = below < above
  r = tf.where(flip, below, above) / h  # in [0, 1/2], so 1 - r loses nothing
  d_near, d_far = tf.where(flip, d_hi, d_lo), tf.where(flip, d_lo, d_hi)
  near = _near_root(r, h / w, d_near, d_far)
  # f' is symmetric under the reflection, so the reflected variables give it directly.
  log_det, _, _, _ = _slope(near, h / w, d_near, d_far)
  x = tf.where(flip, x_hi, x_lo) + tf.where(flip, -near, near) * w
  far = 1.0 - near
  return x, -log_det, tf.where(flip, far, near), tf.where(flip, near, far)


def _bin_partials(xi, om, lo, hi):
  """The bin's sizes and the partials of R = xi A / D and L = log f' (`_forward_gradient`).

  Returns a dict: w, h, s = h / w, D and E, R and 1 - R (the latter without
  cancellation), and the partials of R and L by xi, s, d_k and d_{k+1}.
  """
  (x_lo, y_lo, d_lo), (x_hi, y_hi, d_hi) = lo, hi
  w, h = x_hi - x_lo, y_hi - y_lo
  s = h / w
  a = d_lo * om + s * xi
  c = s * om + d_hi * xi
  den = om * c + xi * a
  e = om * a + xi * c
  t = xi * om
  inv_den2 = 1.0 / (den * den)
  inv_e = 1.0 / e
  two_t_den = 2.0 * t / den
  return {
      "w": w, "h": h, "s": s, "den": den, "e": e,
      "r": xi * a / den, "r_bar": om * c / den,
      "r_xi": s * e * inv_den2,
      "r_s": t * (d_hi * xi * xi - d_lo * om * om) * inv_den2,
      "r_dlo": t * om * c * inv_den2,
      "r_dhi": -t * xi * a * inv_den2,
      "l_xi": (2.0 * inv_e * (d_hi * xi - d_lo * om + s * (om - xi))
               - 2.0 * (d_lo + d_hi - 2.0 * s) * (om - xi) / den),
      "l_s": 2.0 * t * inv_e + two_t_den * (d_lo + d_hi) / s,
      "l_dlo": om * om * inv_e - two_t_den,
      "l_dhi": xi * xi * inv_e - two_t_den,
  }


def _forward_gradient(g_out, g_log_det, xi, om, lo, hi):
  """Closed-form vector-Jacobian product of one bin's forward spline, outputs to inputs.

  With s = h / w, R(xi) = xi A / D (so y = y_k + h R, eq. 4), L = log f' (eq. 5),
  E = (1 - xi) A + xi C and t = xi (1 - xi), the partials are

    R_xi = s E / D^2,  R_s = t (d_{k+1} xi^2 - d_k (1 - xi)^2) / D^2,
    R_dk = t (1 - xi) C / D^2,  R_dk+1 = -t xi A / D^2,
    L_xi = E_xi / E - 2 D_xi / D,  L_s = 2t / E + 2t (d_k + d_{k+1}) / (s D),
    L_dk = (1 - xi)^2 / E - 2t / D,  L_dk+1 = xi^2 / E - 2t / D,
    E_xi = 2 (d_{k+1} xi - d_k (1 - xi) + s (1 - 2 xi)),  D_xi = (d_k + d_{k+1} - 2s)(1 - 2 xi).

  Forward (y, L): with P_v = g_y h R_v + g_L L_v for v in (xi, s, d_k, d_{k+1}),
    g_x = P_xi / w,  g_{x_k} = (s P_s - (1 - xi) P_xi) / w,  g_{x_k+1} = -(xi P_xi + s P_s) / w,
    g_{y_k} = g_y (1 - R) - P_s / w,  g_{y_k+1} = g_y R + P_s / w,  g_{d_j} = P_{d_j}.

  Args:
    g_out, g_log_det: upstream gradients of the output and the log-det.
    xi, om: the bin coordinate xi of the point (x side) and 1 - xi, each computed
      from its nearer knot.
    lo, hi: (x_k, y_k, d_k) and (x_{k+1}, y_{k+1}, d_{k+1}).

  Returns:
    (g_input, (g_{x_k}, g_{y_k}, g_{d_k}), (g_{x_k+1}, g_{y_k+1}, g_{d_k+1})).
  """
  p = _bin_partials(xi, om, lo, hi)
  w, h, s = p["w"], p["h"], p["s"]
  p_xi = g_out * h * p["r_xi"] + g_log_det * p["l_xi"]
  p_s = g_out * h * p["r_s"] + g_log_det * p["l_s"]
  g_lo = ((s * p_s - om * p_xi) / w, g_out * p["r_bar"] - p_s / w,
          g_out * h * p["r_dlo"] + g_log_det * p["l_dlo"])
  g_hi = (-(xi * p_xi + s * p_s) / w, g_out * p["r"] + p_s / w,
          g_out * h * p["r_dhi"] + g_log_det * p["l_dhi"])
  return p_xi / w, g_lo, g_hi


def _inverse_gradient(g_out, g_log_det, xi, om, lo, hi):
  """`_forward_gradient` for the inverse: x = x_k + w xi with R(xi) = r = (y - y_k) / h.

  The outputs are x and -L. By the implicit function theorem, with
  Q = (g_x w - g_L L_xi) / R_xi and P_v = -(Q R_v + g_L L_v),
    g_y = Q / h,  g_{y_k} = -(1 - R) Q / h - P_s / w,  g_{y_k+1} = -R Q / h + P_s / w,
    g_{x_k} = g_x (1 - xi) + s P_s / w,  g_{x_k+1} = g_x xi - s P_s / w,  g_{d_j} = P_{d_j}.
  Arguments and result as for `_forward_gradient`.
  """
  p = _bin_partials(xi, om, lo, hi)
  w, h, s = p["w"], p["h"], p["s"]
  q = (g_out * w - g_log_det * p["l_xi"]) * (p["den"] * p["den"]) / (s * p["e"])
  p_s = -(q * p["r_s"] + g_log_det * p["l_s"])
  g_in = q / h
  g_lo = (g_out * om + s * p_s / w, -p["r_bar"] * g_in - p_s / w,
          -(q * p["r_dlo"] + g_log_det * p["l_dlo"]))
  g_hi = (g_out * xi - s * p_s / w, -p["r"] * g_in + p_s / w,
          -(q * p["r_dhi"] + g_log_det * p["l_dhi"]))
  return g_in, g_lo, g_hi


# One direction of the spline: the knot row the bin search reads (x for the forward, y
# for the inverse: the bin of y is the image of the bin of x), the in-bin map and its
# closed-form gradient.
_Direction = collections.namedtuple("_Direction", ["search_row", "in_bin", "gradient"])
_FORWARD = _Direction(0, _forward_in_bin, _forward_gradient)
_INVERSE = _Direction(1, _inverse_in_bin, _inverse_gradient)


def _kernel(spline, direction):
  """`spline` in `direction` as `(value, params) -> (out, log_det)`.

  `value` is [...] and `params` [..., P] of the same batch shape. The returned function
  has a closed-form gradient (see `_forward_gradient` for the bin's own formulas).
  Constraints, with F the cumulative softmax of K unnormalised sizes u (F_0 = 0,
  F_K = 1, p = softmax(u)):

    knot_j = -B + 2B m j + S F_j  (j < K),  knot_K = B,  S = 2B (1 - K m)
    d knot_j / d u_i = S p_i ([i < j] - F_j)
    d_j = m_d + softplus(u_j + c),   d d_j / d u_j = sigmoid(u_j + c)

  The bin's lower and upper knots are j = k and k + 1, so with upstream gradients a, b
  of those knots the gradient of the sizes is
  S p_i (a ([i < k] - F_k) + b ([i <= k] - F_{k+1})): 0/1 masks from the bin index, no
  cumulative sum; [i < k] - F_k is 1 - F_k or -F_k, each taken as a sum of positive
  p's. The last knot does not depend on u, and its term vanishes: 1 - F_K = 0. Only the
  bin's two slopes are constrained (two softplus per value, not K - 1).

  Cost (XLA on CPU, x of shape [256, 32], K = 8, float32, one thread): value and
  gradient 1.5 ms against 4.3 ms for autodiff of the previous kernel's forward code;
  value alone on par (0.58 against 0.63 ms). (Second derivatives through the closed-form gradient are not exact.)
  """
  k = spline.num_bins
  bound = spline.bound
  circular = spline.circular
  mins = np.array([spline.min_bin_width, spline.min_bin_height])
  scale = 2.0 * bound * (1.0 - k * mins)  # S for the x and y rows
  j = np.arange(k + 1)
  # Row r of the knots is F * knot_scale[r] + knot_offset[r]; the last column is exactly
  # B (scale 0, offset B), and the first exactly -B (F_0 = 0), so the spline meets the
  # tails, or wraps, without a rounding gap.
  knot_scale = scale[:, np.newaxis] * (j < k)
  knot_offset = np.where(j < k, -bound + 2.0 * bound * mins[:, np.newaxis] * j, bound)
  upper = np.triu(np.ones([k, k + 1]), k=1)
  shift = math.log(math.expm1(1.0 - spline.min_derivative))
  search_row = direction.search_row
  num_slopes = spline.num_params - 2 * k

  @tf.custom_gradient
  def kernel(value, params):
    dtype = value.dtype

    # Widths and heights each take their own max and exp: XLA on the CPU runs the K-wide
    # slices as vector loops, where a [..., 2, K] view of the 2K-wide slice became a
    # strided loop 2-3x slower (the 2-D NSF's sampling spent a tenth of its time in it).
    width_logits, height_logits, slope_logits = tf.split(params, [k, k, num_slopes], -1)
    exp = tf.stack([tf.exp(u - tf.reduce_max(u, axis=-1, keepdims=True))
                    for u in (width_logits, height_logits)], axis=-2)
    # One matmul with a 0/1 upper-triangular matrix gives every partial sum and the
    # total; dividing by the total makes F_0 exactly 0 and F_K exactly 1.
    partial = tf.tensordot(exp, tf.constant(upper, dtype), axes=1)
    total = partial[..., -1:]
    knots = (partial / total * tf.constant(knot_scale, dtype)
             + tf.constant(knot_offset, dtype))
    if circular:
      inside, safe = None, value
    else:
      inside = tf.abs(value) <= bound
      # Double where: the spline sees 0 for tail inputs, so +-inf and far tails put no
      # inf or NaN into its arithmetic or its gradient; the tails are selected back.
      safe = tf.where(inside, value, tf.zeros_like(value))
    # The bin counts the interior knots at or below the value (the search runs on the
    # y-knots for the inverse: the bin of y is the image of the bin of x), so a value
    # equal to the last knot falls in the last bin.
    index = tf.reduce_sum(tf.cast(
        tf.expand_dims(safe, -1) >= knots[..., search_row, 1:-1], tf.int32), axis=-1)
    # One exact nonzero product per sum: the knots at j = index and index + 1 of both
    # rows in one reduction (the bins' lower and upper knots picked by one K-wide
    # one-hot), the two slope logits in another. Under XLA each reduction is a kernel
    # that recomputes the knots it reads: one instead of four made sampling the 64-D NSF
    # 1.9x faster (benchmarks/RESULTS.md; gathers were slower still).
    windows = tf.stack([knots[..., :-1], knots[..., 1:]], -2)
    hot = tf.one_hot(index, k, dtype=dtype)[..., tf.newaxis, tf.newaxis, :]
    picked = tf.reduce_sum(windows * hot, -1)
    (x_lo, x_hi), (y_lo, y_hi) = [tf.unstack(row, axis=-1)
                                  for row in tf.unstack(picked, axis=-2)]
    lo, hi = [x_lo, y_lo], [x_hi, y_hi]
    # Slopes: only the bin's two are constrained. Parameter j is knot j + 1's on the
    # line (knots 0 and K have slope 1, where one_hot gives all zeros) and knot j's on
    # the circle (knot K is knot 0).
    if circular:
      slope_index = tf.stack([index, tf.math.floormod(index + 1, k)], -1)
    else:
      slope_index = tf.stack([index - 1, index], -1)
    slope_hots = tf.one_hot(slope_index, num_slopes, dtype=dtype)
    slope_lo_hot, slope_hi_hot = tf.unstack(slope_hots, axis=-2)
    logits = tf.reduce_sum(tf.expand_dims(slope_logits, -2) * slope_hots, -1) + shift
    logit_lo, logit_hi = tf.unstack(logits, axis=-1)
    d_lo, d_hi = tf.unstack(spline.min_derivative + tf.math.softplus(logits), axis=-1)
    if not circular:
      ones = tf.ones_like(d_lo)
      d_lo = tf.where(index > 0, d_lo, ones)
      d_hi = tf.where(index < k - 1, d_hi, ones)
    lo.append(d_lo)
    hi.append(d_hi)
    out, log_det, xi, om = direction.in_bin(safe, lo, hi)
    if inside is not None:
      out = tf.where(inside, out, value)
      log_det = tf.where(inside, log_det, tf.zeros_like(log_det))

    def grad(g_out, g_log_det):
      g_out = tf.zeros_like(value) if g_out is None else g_out
      g_log_det = tf.zeros_like(value) if g_log_det is None else g_log_det
      g_out_in = g_out
      if inside is not None:  # tails: the identity, no parameter dependence
        g_out_in = tf.where(inside, g_out, tf.zeros_like(g_out))
        g_log_det = tf.where(inside, g_log_det, tf.zeros_like(g_log_det))
      g_in, g_lo, g_hi = direction.gradient(g_out_in, g_log_det, xi, om, lo, hi)
      if inside is not None:
        g_in = tf.where(inside, g_in, g_out)
      bins = tf.range(k)
      below = tf.cast(bins < index[..., tf.newaxis], dtype)
      upto = tf.cast(bins <= index[..., tf.newaxis], dtype)
      columns = []
      for row in range(2):
        # F_k and 1 - F_k (likewise for k + 1) as sums of positive terms, so that
        # [i < k] - F_k keeps its relative precision when F_k is near 0 or 1.
        p = exp[..., row, :] / total[..., row, :]
        f_lo, f_hi = tf.reduce_sum(p * below, -1), tf.reduce_sum(p * upto, -1)
        g_bar_lo = tf.reduce_sum(p * (1.0 - below), -1)
        g_bar_hi = tf.reduce_sum(p * (1.0 - upto), -1)
        a = (scale[row] * g_lo[row])[..., tf.newaxis]
        b = (scale[row] * g_hi[row])[..., tf.newaxis]
        columns.append(p * (
            tf.where(below > 0, a * g_bar_lo[..., tf.newaxis], -a * f_lo[..., tf.newaxis])
            + tf.where(upto > 0, b * g_bar_hi[..., tf.newaxis], -b * f_hi[..., tf.newaxis])))
      columns.append(
          (g_lo[2] * tf.math.sigmoid(logit_lo))[..., tf.newaxis] * slope_lo_hot
          + (g_hi[2] * tf.math.sigmoid(logit_hi))[..., tf.newaxis] * slope_hi_hot)
      return g_in, tf.concat(columns, axis=-1)

    return (out, log_det), grad

  return kernel


@functools.lru_cache(maxsize=None)
def _traced_kernel(spline, direction, dtype, rank):
  """`_kernel` of `spline` as one `tf.function` of `(value, params)` of this dtype and rank.

  A flow's layers hold equal splines, so the kernel and its closed-form gradient are
  traced once per configuration, direction, dtype and rank instead of once per layer:
  the first XLA step of the 8-layer 64-D NSF traces in about 1.2 s instead of 2.1 s
  (benchmarks/RESULTS.md). Graph mode and XLA inline the call with the caller's static
  shapes, so the compiled step is the same. The signature leaves every dimension open
  (but the parameters'), so no batch shape retraces it; flattening to one dimension
  instead made XLA copy the coupling's strided half of the input.
  """
  batch = None if rank is None else [None] * rank
  params = None if rank is None else batch + [spline.num_params]
  return tf.function(_kernel(spline, direction), autograph=False,
                     input_signature=[tf.TensorSpec(batch, dtype),
                                      tf.TensorSpec(params, dtype)])


class RationalQuadraticSpline:
  """A monotonic rational-quadratic spline with K bins on [-B, B], as a pure function.

  The constraints and formulas are documented on
  `tfp_flows.bijectors.RationalQuadraticTransformer` (line: identity tails, K - 1 free
  interior slopes, `3K - 1` parameters per value) and
  `tfp_flows.bijectors.CircularRationalQuadraticTransformer` (circle: K free slopes with
  d_K = d_0, `3K` parameters, inputs wrapped to [-B, B) first).

  Args:
    num_bins: integer K >= 1.
    bound: finite B > 0.
    min_bin_width, min_bin_height: m_w, m_h > 0 with K m < 1.
    min_derivative: m_d in (0, 1).
    circular: the periodic spline on the circle rather than the line.

  Raises:
    ValueError: for an argument outside these ranges, quoting it.
  """

  def __init__(self, num_bins, bound, min_bin_width, min_bin_height, min_derivative,
               circular=False):
    if not checks.is_int_at_least(num_bins, 1):
      raise ValueError(f"num_bins must be an integer >= 1; got {num_bins!r}.")
    if not (isinstance(bound, numbers.Real) and math.isfinite(bound) and bound > 0):
      raise ValueError(f"bound must be a finite positive number; got {bound!r}.")
    for name, value in [("min_bin_width", min_bin_width),
                        ("min_bin_height", min_bin_height)]:
      if not (isinstance(value, numbers.Real) and value > 0):
        raise ValueError(f"{name} must be positive; got {value!r}.")
      if not value * num_bins < 1:
        raise ValueError(
            f"{name} * num_bins must be below 1 so the bins fit in [-bound, bound]; got "
            f"{name}={value!r} with num_bins={num_bins!r}.")
    if not (isinstance(min_derivative, numbers.Real) and 0 < min_derivative < 1):
      raise ValueError(f"min_derivative must be in (0, 1); got {min_derivative!r}.")
    self.num_bins = int(num_bins)
    self.bound = float(bound)
    self.min_bin_width = float(min_bin_width)
    self.min_bin_height = float(min_bin_height)
    self.min_derivative = float(min_derivative)
    self.circular = bool(circular)

  @property
  def num_params(self):
    """Parameters per value: K widths, K heights and the free slopes."""
    return 3 * self.num_bins - (0 if self.circular else 1)

  def forward(self, x, params):
    """(y, log dy/dx), both shaped like `x`; `params` is x.shape + [num_params]."""
    return self._apply(_FORWARD, x, params)

  def inverse(self, y, params):
    """(x, log dx/dy), both shaped like `y`; `params` is y.shape + [num_params]."""
    return self._apply(_INVERSE, y, params)

  def _apply(self, direction, value, params):
    value, params = self._prepare(value, params)
    if not tf.inside_function():  # eager calls would pay a trace for each configuration
      return _kernel(self, direction)(value, params)
    out, log_det = _traced_kernel(self, direction, value.dtype, value.shape.rank)(value,
                                                                                params)
    # Asked for the gradient with respect to the call's outputs, `tf.gradients` (which
    # TFP's value_and_gradient, hence its MCMC kernels, run in graph mode) differentiated
    # into the call too and failed to compile under XLA; identities end the path there.
    return tf.identity(out), tf.identity(log_det)

  def _configuration(self):
    return (self.num_bins, self.bound, self.min_bin_width, self.min_bin_height,
            self.min_derivative, self.circular)

  def __eq__(self, other):
    return (type(other) is type(self)
            and other._configuration() == self._configuration())  # pylint: disable=protected-access

  def __hash__(self):
    return hash(self._configuration())

  def _prepare(self, value, params):
    """`value` (wrapped on the circle) and `params` with one dtype and one batch shape."""
    value = tf.convert_to_tensor(value)
    params = tf.convert_to_tensor(params, dtype=value.dtype)
    if self.circular:
      # [-B, B) except that B itself is kept (it is the same point as -B, and keeping it
      # makes the round trip exact there).
      bound = tf.constant(self.bound, value.dtype)
      value = tf.where(tf.abs(value) <= bound, value,
                       tf.math.floormod(value + bound, 2.0 * bound) - bound)
    if value.shape.is_fully_defined() and params.shape[:-1] == value.shape:
      return value, params
    # Broadcast by adding zeros, not by `tf.broadcast_to` of a run-time shape: inside a
    # `tf.while_loop` (CouplingScan) that shape would reach the loop's gradient as a
    # stored value, which XLA cannot take for a shape.
    value = value + tf.zeros_like(params[..., 0])
    return value, params + tf.zeros_like(value)[..., tf.newaxis]
