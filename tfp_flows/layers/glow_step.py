"""Keras layer for one step of Glow: ActNorm -> invertible 1x1 conv -> coupling."""

import keras

from tfp_flows.layers import act_norm
from tfp_flows.layers import coupling as coupling_layers
from tfp_flows.layers import flow_layer
from tfp_flows.layers import invertible_conv1x1

__all__ = ["GlowStep"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class GlowStep(flow_layer.FlowChain):
  """One Glow step, data -> base: ActNorm, invertible 1x1 convolution, coupling.

  Reference: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039 (Sec. 3, Table 1).

  Args:
    hidden_channels: width of the coupling's conv net (0: one convolution).
    coupling: "affine" or "additive".
    scale: the affine coupling's scale map, "sigmoid" (Glow's) or "exp"; see
      `tfp_flows.bijectors.AffineTransformer`.
    clamp: the affine scale's bound: sampling expands a coordinate by at most
      e^clamp per coupling ("sigmoid"), or |log s| <= clamp ("exp").
    lu: LU-parameterised 1x1 convolution.
    mask: "half" (channel split) or "checkerboard".
    reverse: transform the other half / checkerboard colour.
    seed: seed of the 1x1 convolution's initial rotation.
    flow_layers: given when restoring from a config; otherwise built from the above.
  """

  def __init__(self, hidden_channels=512, coupling="affine", lu=True, mask="half",
               reverse=False, seed=0, scale="exp", clamp=2.0, flow_layers=None,
               **kwargs):
    if coupling not in ("affine", "additive"):
      raise ValueError(f"coupling must be 'affine' or 'additive'; got {coupling!r}.")
    self.hidden_channels = int(hidden_channels)
    self.coupling = coupling
    self.lu = bool(lu)
    self.mask = mask
    self.reverse = bool(reverse)
    self.seed = int(seed)
    self.scale = scale
    self.clamp = float(clamp)
    if flow_layers is None:
      # The step's dtype reaches its layers, so GlowStep(dtype="float64") is float64.
      dtype = kwargs.get("dtype")
      common = dict(mask=mask, reverse=reverse, hidden_channels=hidden_channels,
                    name="coupling", dtype=dtype)
      coupling_layer = (
          coupling_layers.AffineCoupling(scale=scale, clamp=clamp, **common)
          if coupling == "affine" else coupling_layers.AdditiveCoupling(**common))
      flow_layers = [
          act_norm.ActNorm(name="act_norm", dtype=dtype),
          invertible_conv1x1.InvertibleConv1x1(lu=lu, seed=seed, name="conv1x1",
                                               dtype=dtype),
          coupling_layer,
      ]
    super().__init__(flow_layers, **kwargs)

  def get_config(self):
    return {**super().get_config(), "hidden_channels": self.hidden_channels,
            "coupling": self.coupling, "lu": self.lu, "mask": self.mask,
            "reverse": self.reverse, "seed": self.seed, "scale": self.scale,
            "clamp": self.clamp}
