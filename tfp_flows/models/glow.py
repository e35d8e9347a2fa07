"""The Glow preset: a multi-scale flow over discrete images."""

from tfp_flows import flow
from tfp_flows import layers
from tfp_flows.models import _aliases
from tfp_flows.models import _dtype

__all__ = ["Glow"]


def Glow(event_shape=None, num_scales=3, steps_per_scale=8, hidden_channels=256,  # pylint: disable=invalid-name
         coupling="affine", lu=True, num_bits=8, num_classes=None, mask="half",
         logit_alpha=0.05, scale="exp", clamp=2.0, name="glow", *, image_shape=None,
         dtype=None):
  """A multi-scale Glow over integer images in [0, 2**num_bits), as a `FlowModel`.

  Data side first: `Dequantize(num_bits)` (uniform noise in training, logit transform);
  then per scale `Squeeze`, `steps_per_scale` x `GlowStep` (ActNorm, 1x1 conv, coupling),
  and, except at the last scale, `FactorOut` (half the channels leave with a learned
  conditional Gaussian); the last scale ends in a learned `GaussianPrior`, class
  conditional when `num_classes` is set (`log_prob(x, context=labels)`,
  `sample(n, context=labels)`). `model.sample(n, temperature=0.7)` samples at a lower
  temperature. Reported `bits_per_dim` is in the discrete pixel space.

  Reference: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039.

  `event_shape` is the library's spelling (that of `FlowModel` and the other presets);
  `image_shape` is the older alias. Pass one of the two.

  Args:
    event_shape: `[H, W, C]`, the shape of one image; H and W divisible by
      2**num_scales. Required, in this spelling or as `image_shape`.
    num_scales: number of squeeze levels.
    steps_per_scale: Glow steps per level.
    hidden_channels: width of each coupling's conv net (0: one convolution, no hidden
      layers).
    coupling: "affine" or "additive".
    lu: LU-parameterised 1x1 convolutions (else plain matrices).
    num_bits: bits per pixel of the data.
    num_classes: number of labels for a class-conditional prior, or None.
    mask: "half" (channel split) or "checkerboard" (alternating colours per step).
    logit_alpha: margin of the logit preprocessing, or None for Glow's linear scaling
      of pixels to [-1/2, 1/2).
    scale: the affine couplings' scale map, "exp" (soft-clamped exp, |log s| < clamp in
      both directions) or "sigmoid" (Glow's: training multiplies by a sigmoid and can
      expand by at most 1.14 per coupling). Measured on Fashion-MNIST (README), "exp"
      learns faster and had no loss spikes, so it is the default.
    clamp: the scale's bound: with "exp", |log s| < clamp, so one coupling expands or
      contracts by at most e^clamp either way (finite samples, bounded training
      latents); with "sigmoid", sampling expands by at most e^clamp per coupling.
    name: model name.
    image_shape: older alias of `event_shape`.
    dtype: the dtype policy of every layer and of the model: None for Keras' global one
      (`keras.config.set_floatx`), "float32" or "float64". Under a global mixed precision
      policy pass "float32": flows compute in one float type.

  Raises:
    ValueError: for a bad shape, counts or variant, or the shape passed in both
      spellings (or in neither).
  """
  height, width, channels = _aliases.image_event_shape("Glow", event_shape, image_shape)
  if num_scales < 1 or steps_per_scale < 1:
    raise ValueError("num_scales and steps_per_scale must be at least 1; got "
                     f"{num_scales} and {steps_per_scale}.")
  factor = 2 ** num_scales
  if height % factor or width % factor:
    raise ValueError(f"{num_scales} scales squeeze by {factor}: image height and width "
                     f"must be divisible by {factor}; got {[height, width, channels]}.")
  seeds = iter(range(num_scales * steps_per_scale))
  dtype = _dtype.layer_arguments("Glow", dtype)

  def level_layers(level):
    steps = [layers.Squeeze(2, **dtype)] + [
        layers.GlowStep(hidden_channels=hidden_channels, coupling=coupling, lu=lu,
                        mask=mask, reverse=(mask == "checkerboard" and step % 2 == 1),
                        seed=next(seeds), scale=scale, clamp=clamp, **dtype)
        for step in range(steps_per_scale)]
    if level == num_scales - 1:
      return steps + [layers.GaussianPrior(num_classes=num_classes, **dtype)]
    return steps + [layers.FactorOut(level_layers(level + 1), **dtype)]

  flow_layers = ([layers.Dequantize(num_bits=num_bits, alpha=logit_alpha, **dtype)]
                 + level_layers(0))
  return flow.FlowModel(
      flow_layers, event_shape=[height, width, channels],
      context_shape=None if num_classes is None else [],
      context_dtype="int32", name=name, **dtype)
