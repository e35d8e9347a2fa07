"""Monotonic rational-quadratic spline transformers (Neural Spline Flows).

Two elementwise transformers (see `tfp_flows.bijectors.transformers`) for couplings and
autoregressive flows: `RationalQuadraticTransformer` on the real line (a spline on
[-B, B], the identity outside) and `CircularRationalQuadraticTransformer` on the circle
(a periodic spline on [-B, B], for angles). The math and its closed-form gradient live in
`tfp_flows.numerics.spline`; these classes hold its configuration and state the
transform.
"""

import math

from tfp_flows.bijectors import transformers
from tfp_flows.numerics import spline as spline_lib

__all__ = ["RationalQuadraticTransformer", "CircularRationalQuadraticTransformer"]


class _RationalQuadraticBase(transformers.Transformer):
  """Configuration and the kernel calls shared by the two spline transformers."""

  _circular = False

  def __init__(self, num_bins, bound, min_bin_width, min_bin_height, min_derivative):
    self._spline = spline_lib.RationalQuadraticSpline(
        num_bins, bound, min_bin_width, min_bin_height, min_derivative,
        circular=self._circular)
    self.num_bins = self._spline.num_bins
    self.bound = self._spline.bound
    self.min_bin_width = self._spline.min_bin_width
    self.min_bin_height = self._spline.min_bin_height
    self.min_derivative = self._spline.min_derivative

  @property
  def num_params(self):
    return self._spline.num_params

  def get_config(self):
    return {"num_bins": self.num_bins, "bound": self.bound,
            "min_bin_width": self.min_bin_width, "min_bin_height": self.min_bin_height,
            "min_derivative": self.min_derivative}

  def forward(self, x, params):
    """Returns (y, log dy/dx), both shaped like `x`; `params` is x.shape + [num_params]."""
    return self._spline.forward(x, params)

  def inverse(self, y, params):
    """Returns (x, log dx/dy), both shaped like `y`; `params` is y.shape + [num_params]."""
    return self._spline.inverse(y, params)


class RationalQuadraticTransformer(_RationalQuadraticBase):
  """Monotonic rational-quadratic spline on [-B, B], the identity outside.

  #### Mathematical Details

  Per coordinate, `params[..., :K]` are unnormalised bin widths, `params[..., K:2K]`
  unnormalised heights and `params[..., 2K:]` the K - 1 unnormalised interior
  derivatives (`num_params = 3K - 1`). They are constrained as

  ```none
  w_k = 2B (m_w + (1 - K m_w) softmax(u_w)_k),   h_k likewise with m_h and u_h
  d_k = m_d + softplus(u_d,k + c),  softplus(c) = 1 - m_d      (u = 0 gives d = 1)
  d_0 = d_K = 1                                  (the slope of the linear tails)
  ```

  With knots (x_k, y_k) at -B plus the cumulative sums of the widths and heights
  (x_0 = y_0 = -B, x_K = y_K = B), s_k = h_k / w_k and, for x in bin k,
  xi = (x - x_k) / w_k in [0, 1] (Durkan et al., eq. 4, eq. 5 and Appendix A):

  ```none
  forward:  y = y_k + h_k (s_k xi^2 + d_k xi (1 - xi)) / D(xi),
            D(xi) = s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)
  log-det:  log dy/dx = 2 log s_k + log(d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2)
                        - 2 log D(xi)
  inverse:  r = (y - y_k) / h_k;  xi is the root in [0, 1] of a xi^2 + b xi + c = 0 with
            a = s_k - d_k + r (d_{k+1} + d_k - 2 s_k),  b = d_k - r (d_{k+1} + d_k - 2 s_k),
            c = -s_k r:   xi = 2c / (-b - sqrt(b^2 - 4ac))    if b >= 0
                          xi = (-b + sqrt(b^2 - 4ac)) / 2a    if b < 0 (then a > 0)
            x = x_k + w_k xi,   log dx/dy = -(log dy/dx at xi)
            (solved from the knot nearer to y: for r > 1/2 the same formulas run on the
            reflected bin, r -> 1 - r, xi -> 1 - xi, d_k <-> d_{k+1}, x = x_{k+1} - w_k xi)
  tails:    |x| > B (|y| > B for the inverse): y = x, log-det 0; +-inf pass through
  ```

  The forward searches the bin on the x-knots, the inverse on the y-knots; x = B falls
  in the last bin. All-zero params give equal bins and all derivatives 1: the identity
  with log-det 0.

  Cost per coordinate, either direction: O(K) for the constraints, the bin search and
  the one-hot pick, then O(1) arithmetic (plus one square root for the inverse).

  Numerics: tail inputs are replaced by 0 before the spline arithmetic and selected
  back after it, so tails and infinities give finite values and gradients; eq. 4 and
  eq. 5 are evaluated from sums of positive terms (no cancellation for slopes 1e-3 next
  to 1e4) and from the nearer knot; the inverse uses whichever root formula adds terms
  of one sign, and its gradient comes from the implicit function theorem,
  dx = (dy - d_theta f) / f'(x), rather than from differentiating the root formula.
  The round trip is then as good as the float format allows: x' is a preimage of y up
  to a few ulp, and |x' - x| ~ ulp(y) / (dy/dx). Where large parameters make dy/dx
  tiny (it can reach 1e-6 inside a bin even with min_derivative = 1e-3) many x share
  one float y, and no inverse can return x to 1e-5 in float32 there.

  #### References

  [1]: Conor Durkan, Artur Bekasov, Iain Murray, George Papamakarios. Neural Spline
       Flows. NeurIPS 2019. https://arxiv.org/abs/1906.04032
  [2]: John A. Gregory, Roger Delbourgo. Piecewise rational quadratic interpolation to
       monotonic data. IMA Journal of Numerical Analysis, 1982.
  """

  def __init__(self, num_bins=8, bound=3.0, min_bin_width=1e-3, min_bin_height=1e-3,
               min_derivative=1e-3):
    """Creates the transformer.

    Args:
      num_bins: integer K >= 1, the number of bins.
      bound: positive B; the spline acts on [-B, B].
      min_bin_width: m_w > 0 with K m_w < 1, the smallest width as a fraction of 2B.
      min_bin_height: m_h, the same for heights.
      min_derivative: m_d in (0, 1), the smallest interior knot derivative.

    Raises:
      ValueError: for an argument outside these ranges.
    """
    super().__init__(num_bins, bound, min_bin_width, min_bin_height, min_derivative)


class CircularRationalQuadraticTransformer(_RationalQuadraticBase):
  """Periodic rational-quadratic spline on the circle [-B, B) (default B = pi).

  #### Mathematical Details

  The spline of `RationalQuadraticTransformer` (same widths, heights and formulas) with
  K free knot derivatives: `params[..., 2K:3K]` give d_0 .. d_{K-1} and d_K = d_0, so
  `num_params = 3K`. The end knots are (-B, -B) and (B, B) and the end slopes agree,
  so the map is a diffeomorphism of the circle R / 2B Z (Rezende et al. 2020):
  f(-B) = -B ~ B = f(B) and f'(-B) = f'(B).

  ```none
  wrap(v):  v if -B <= v <= B, else ((v + B) mod 2B) - B  (in [-B, B))
  forward:  y = spline(wrap(x)),        log dy/dx = log spline'(wrap(x))
  inverse:  x = spline^{-1}(wrap(y)),   log dx/dy = -log spline'(x)
  ```

  Inputs are wrapped to [-B, B) first, except that B itself is kept (it is the same
  point as -B, and keeping it makes the round trip exact there); outputs lie in
  [-B, B]. Hence f(x + 2B) = f(x) (mod 2B) for every x. Non-finite inputs give NaN:
  an infinite angle is no point of the circle. All-zero params give the identity.
  Cost as for `RationalQuadraticTransformer`.

  #### References

  [1]: Danilo Jimenez Rezende, George Papamakarios, Sebastien Racaniere, Michael S.
       Albergo, Gurtej Kanwar, Phiala E. Shanahan, Kyle Cranmer. Normalizing Flows on
       Tori and Spheres. ICML 2020. https://arxiv.org/abs/2002.02428
  [2]: Conor Durkan, Artur Bekasov, Iain Murray, George Papamakarios. Neural Spline
       Flows. NeurIPS 2019. https://arxiv.org/abs/1906.04032
  """

  _circular = True

  def __init__(self, num_bins=8, bound=math.pi, min_bin_width=1e-3,
               min_bin_height=1e-3, min_derivative=1e-3):
    """Creates the transformer.

    Args:
      num_bins: integer K >= 1, the number of bins.
      bound: positive B; angles live on [-B, B) (default pi).
      min_bin_width: m_w > 0 with K m_w < 1, the smallest width as a fraction of 2B.
      min_bin_height: m_h, the same for heights.
      min_derivative: m_d in (0, 1), the smallest knot derivative.

    Raises:
      ValueError: for an argument outside these ranges.
    """
    super().__init__(num_bins, bound, min_bin_width, min_bin_height, min_derivative)
