"""The residual flow preset: invertible residual blocks with unbiased log-determinants."""

from tfp_flows import flow
from tfp_flows import layers
from tfp_flows.models import _aliases
from tfp_flows.models import _dtype

__all__ = ["ResidualFlow"]


def ResidualFlow(event_shape, num_blocks=8, hidden_units=(128, 128), lipschitz=0.97,  # pylint: disable=invalid-name
                 logdet=None, n_exact_terms=None, actnorm=True, num_bits=None,
                 num_scales=2, gradient="neumann", power_iterations=1,
                 validate_args=False, name="residual_flow", *, log_det=None,
                 num_exact_terms=None, dtype=None):
  """A residual flow (Chen et al. 2019) over vectors or images, as a `FlowModel`.

  Data side first: optionally `Dequantize(num_bits)` for integer data (logit margin
  1e-3), then `num_blocks` x [`ActNorm` (if `actnorm`), `ResidualBlock`]. Vectors get
  MLP blocks; images `[H, W, C]` get convolutional blocks split over `num_scales`
  scales with a `Squeeze` (space-to-depth) before each scale after the first.

  Training uses the `log_det` estimator (unbiased Russian roulette by default, with
  `num_exact_terms` terms always computed and the Neumann-series gradient); evaluation
  (`log_prob`, export) uses the exact log-det for events of at most 256 entries, else
  a deterministic one-probe series with bias below 1e-3 nats per block (see
  `tfp_flows.layers.ResidualBlock.log_det_mode`). Sampling inverts every block by
  fixed-point iteration.

  Reference: Chen, Behrmann, Duvenaud, Jacobsen. Residual Flows for Invertible
  Generative Modeling. https://arxiv.org/abs/1906.02735

  `log_det` and `num_exact_terms` are the library's spellings (those of
  `tfp_flows.layers.ResidualBlock` and the bijector, counts as `num_*`); `logdet` and
  `n_exact_terms` are older aliases. Pass one spelling of each.

  Args:
    event_shape: `[D]` or `[H, W, C]`.
    num_blocks: number of residual blocks.
    hidden_units: hidden sizes of each block's MLP (images: the first is the width).
    lipschitz: spectral-norm coefficient in (0, 1).
    logdet: older alias of `log_det`.
    n_exact_terms: older alias of `num_exact_terms`.
    actnorm: an ActNorm before every block.
    num_bits: for integer data in [0, 2**num_bits), a `Dequantize` layer first.
    num_scales: image scales (each after the first starts with a squeeze).
    gradient: "neumann" or "backprop" for the log-det gradient.
    power_iterations: spectral-norm power steps per training call (see
      `tfp_flows.layers.ResidualBlock`).
    validate_args: `sample` raises when a block's fixed-point inverse does not converge
      (instead of NaN rows); see `tfp_flows.layers.ResidualBlock`.
    name: model name.
    log_det: training estimator, "russian_roulette" (default), "series" or "exact".
    num_exact_terms: terms the roulette always computes (default 2).
    dtype: the dtype policy of every layer and of the model: None for Keras' global one
      (`keras.config.set_floatx`), "float32" or "float64". Under a global mixed precision
      policy pass "float32": flows compute in one float type.

  Raises:
    ValueError: for bad shapes or counts (layer arguments are checked by the layers),
      or an argument passed in both spellings.
  """
  log_det = _aliases.resolve("log_det", log_det, "logdet", logdet, "russian_roulette")
  num_exact_terms = _aliases.resolve("num_exact_terms", num_exact_terms, "n_exact_terms",
                                     n_exact_terms, 2)
  event_shape = [int(d) for d in event_shape]
  if len(event_shape) not in (1, 3) or min(event_shape) < 1:
    raise ValueError(f"event_shape must be [D] or [H, W, C]; got {event_shape}.")
  if int(num_blocks) < 1:
    raise ValueError(f"num_blocks must be positive; got {num_blocks!r}.")
  image = len(event_shape) == 3
  num_scales = int(num_scales) if image else 1
  if image and (num_scales < 1 or num_blocks < num_scales or
                event_shape[0] % 2 ** (num_scales - 1) or
                event_shape[1] % 2 ** (num_scales - 1)):
    raise ValueError(f"{num_scales} scales need num_blocks >= num_scales and H, W "
                     f"divisible by {2 ** (num_scales - 1)}; got {event_shape} and "
                     f"{num_blocks} blocks.")
  dtype = _dtype.layer_arguments("ResidualFlow", dtype)
  flow_layers = []
  if num_bits is not None:
    flow_layers.append(layers.Dequantize(num_bits=num_bits, alpha=1e-3, **dtype))
  for i in range(int(num_blocks)):
    if image and i > 0 and i % (num_blocks // num_scales) == 0 and (
        i // (num_blocks // num_scales)) < num_scales:
      flow_layers.append(layers.Squeeze(2, **dtype))
    if actnorm:
      flow_layers.append(layers.ActNorm(**dtype))
    flow_layers.append(layers.ResidualBlock(
        hidden_units=hidden_units, lipschitz=lipschitz, log_det=log_det,
        num_exact_terms=num_exact_terms, gradient=gradient, power_iterations=power_iterations,
        validate_args=validate_args, **dtype))
  return flow.FlowModel(flow_layers, event_shape=event_shape, name=name, **dtype)
