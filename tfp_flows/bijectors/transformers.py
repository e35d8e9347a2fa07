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
  """Affine transform y = s * x + t with a positive, bounded-below-or-above scale.

  `params[..., 0]` is the unconstrained scale h, `params[..., 1]` the shift t.

  ```none
  scale="sigmoid":  s = sigmoid(h + 2) / sigmoid(2)    (Glow's sigmoid(h + 2), rescaled so
                                                        that h = 0 gives s = 1; s in (0, 1.136))
  scale="exp":      s = exp(c * tanh(h / c))            (soft-clamped exp, c = `clamp`;
                                                        log s in (-c, c), RealNVP-style)
  forward:  y = s * x + t,      log|dy/dx| = log s
  inverse:  x = (y - t) / s,    log|dx/dy| = -log s
  ```

  The sigmoid scale cannot blow up (s < 1.14), which keeps Glow's sampling finite; the
  soft clamp bounds |log s| by `clamp` while staying smooth.

  References: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039; Dinh et al.,
  RealNVP, https://arxiv.org/abs/1605.08803
  """

  num_params = 2

  def __init__(self, scale="sigmoid", clamp=2.0):
    """Args:
      scale: "sigmoid" or "exp", how h maps to the scale (see the class docstring).
      clamp: positive float, the soft bound on |log s| for scale="exp".

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

  def _log_scale(self, h):
    if self.scale == "sigmoid":
      return tf.math.log_sigmoid(h + 2.0) - math.log(1.0 / (1.0 + math.exp(-2.0)))
    return self.clamp * tf.tanh(h / self.clamp)

  def forward(self, x, params):
    log_scale = self._log_scale(params[..., 0])
    return x * tf.exp(log_scale) + params[..., 1], log_scale

  def inverse(self, y, params):
    log_scale = self._log_scale(params[..., 0])
    return (y - params[..., 1]) * tf.exp(-log_scale), -log_scale
