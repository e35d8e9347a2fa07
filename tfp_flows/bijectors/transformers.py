"""Elementwise transformers: the invertible maps that couplings and autoregressive flows
apply to each transformed coordinate, given unconstrained parameters from a conditioner.

A transformer is a small immutable object with

* `num_params`: how many unconstrained parameters it reads per coordinate;
* `forward(x, params) -> (y, log_det)` and `inverse(y, params) -> (x, log_det_inverse)`,
  where `params` has shape `x.shape + [num_params]` and both log-dets are elementwise
  (shape of `x`), computed in the same pass as the values.

All-zero parameters give the identity with log-det 0, so a conditioner whose last layer
starts at zero makes the whole flow start as the identity.
"""

import math

import tensorflow as tf

__all__ = ["Transformer", "AffineTransformer", "AdditiveTransformer"]


class Transformer:
  """Interface of an elementwise transformer (see the module docstring)."""

  num_params = None

  def forward(self, x, params):
    raise NotImplementedError

  def inverse(self, y, params):
    raise NotImplementedError

  def get_config(self):
    return {}

  def __eq__(self, other):
    return type(self) is type(other) and self.get_config() == other.get_config()

  def __hash__(self):
    return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


class AdditiveTransformer(Transformer):
  """NICE's additive transform: y = x + t, log-det 0.

  Reference: Dinh et al., NICE, https://arxiv.org/abs/1410.8516
  """

  num_params = 1

  def forward(self, x, params):
    return x + params[..., 0], tf.zeros_like(x)

  def inverse(self, y, params):
    return y - params[..., 0], tf.zeros_like(y)


class AffineTransformer(Transformer):
  """Affine transform with a positive scale bounded on both sides.

  `params[..., 0]` is the unconstrained scale parameter h, `params[..., 1]` the shift t.
  TFP's forward is base -> data (sampling), its inverse data -> base (`log_prob` and
  training). The two scale maps differ in which direction multiplies:

  ```none
  scale="sigmoid" (Glow):  sigma = m + (1 - m) sigmoid(h + 2) / sigmoid(2),  m = exp(-clamp)
      inverse (data -> base, training):  x = sigma * y + t,      log|dx/dy| =  log sigma
      forward (base -> data, sampling):  y = (x - t) / sigma,    log|dy/dx| = -log sigma
      sigma in (m, m + 1.136 (1 - m)): the training direction can shrink a coordinate but
      never expand it by more than 1.14, and sampling expands by at most 1 / m = e^clamp.
  scale="exp" (RealNVP):   s = exp(c tanh(h / c)),  c = clamp,  log s in (-c, c)
      forward:  y = s * x + t,       log|dy/dx| =  log s
      inverse:  x = (y - t) / s,     log|dx/dy| = -log s
  ```

  Both give the identity at h = t = 0 (sigma = s = 1). Glow multiplies by the sigmoid on
  the data -> latent side, the side training runs: dividing by it there (as sampling does
  here) lets one badly conditioned batch map pixels to latents of 1e3 and spike the loss.
  The floor `m` is the price of finite samples: without it a unit that learned sigma ~ 0
  turns a tail latent into inf when sampling. The soft clamp of "exp" bounds |log s| by
  `clamp` while staying smooth.

  References: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039; Dinh et al.,
  RealNVP, https://arxiv.org/abs/1605.08803
  """

  num_params = 2

  def __init__(self, scale="sigmoid", clamp=2.0):
    """Args:
      scale: "sigmoid" or "exp", how h maps to the scale (see the class docstring).
      clamp: positive float: for "exp" the bound on |log s|; for "sigmoid" the bound on
        the sampling direction's log-expansion, -log of the scale's floor.

    Raises:
      ValueError: for an unknown `scale` or a non-positive `clamp`.
    """
    if scale not in ("sigmoid", "exp"):
      raise ValueError(f"scale must be 'sigmoid' or 'exp'; got {scale!r}.")
    if not clamp > 0:
      raise ValueError(f"clamp must be positive; got {clamp!r}.")
    self.scale = scale
    self.clamp = float(clamp)

  def get_config(self):
    return {"scale": self.scale, "clamp": self.clamp}

  def _log_forward_scale(self, h):
    """log|dy/dx| of the forward (base -> data) map, elementwise."""
    if self.scale == "exp":
      return self.clamp * tf.tanh(h / self.clamp)
    floor = math.exp(-self.clamp)
    sigmoid_2 = 1.0 / (1.0 + math.exp(-2.0))
    sigma = floor + (1.0 - floor) / sigmoid_2 * tf.sigmoid(h + 2.0)
    return -tf.math.log(sigma)

  def forward(self, x, params):
    log_scale = self._log_forward_scale(params[..., 0])
    if self.scale == "exp":
      return x * tf.exp(log_scale) + params[..., 1], log_scale
    return (x - params[..., 1]) * tf.exp(log_scale), log_scale

  def inverse(self, y, params):
    log_scale = self._log_forward_scale(params[..., 0])
    if self.scale == "exp":
      return (y - params[..., 1]) * tf.exp(-log_scale), -log_scale
    return y * tf.exp(-log_scale) + params[..., 1], -log_scale
