"""The command line's preset table: how flag values become a `tfp_flows.models` preset.

Each entry of `PRESETS` names a factory in `tfp_flows.models`, the events and data it
models, and how the architecture flags map to its arguments: a new preset is one entry
(plus flags for any arguments of its own). A preset whose factory this installation
lacks stays listed and fails with a clear message when chosen.
"""

import dataclasses
import math
from typing import Callable

from tfp_flows import models
from tfp_flows.cli.errors import UsageError

__all__ = ["Options", "Preset", "PRESETS", "build"]


@dataclasses.dataclass(frozen=True)
class Options:
  """Architecture flags. None leaves the preset's own default."""
  num_layers: int | None = None
  hidden_units: tuple | None = None
  num_bins: int | None = None
  autoregressive: bool = False
  lipschitz: float | None = None
  num_scales: int | None = None
  steps_per_scale: int | None = None
  hidden_channels: int | None = None
  coupling: str | None = None
  logit_alpha: float | None = None
  solver: str | None = None
  num_steps: int | None = None
  trace: str | None = None
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Preset:
  """How the command line builds one preset.

  Attributes:
    factory: name of the preset function in `tfp_flows.models`.
    events: "images" (`[H, W, C]` only), "vectors" (`[D]`; image rows are flattened)
      or "any".
    data: "discrete" (needs integer pixels and takes `num_bits`) or "any" (`num_bits`
      for integer data, else none).
    arguments: `(Options, event_shape) -> dict` of the factory's other keyword
      arguments; None values are dropped so that the preset's defaults apply.
  """
  factory: str
  events: str
  data: str
  arguments: Callable[[Options, list], dict]


PRESETS = {
    "glow": Preset("Glow", events="images", data="discrete", arguments=lambda o, shape: dict(
        event_shape=shape, num_scales=o.num_scales, steps_per_scale=o.steps_per_scale,
        hidden_channels=o.hidden_channels, coupling=o.coupling,
        # 0 selects Glow's linear pixel scaling, which the preset spells None.
        logit_alpha=o.logit_alpha or None)),
    "nsf": Preset("NeuralSplineFlow", events="vectors", data="any",
                  arguments=lambda o, shape: dict(
                      event_dims=shape[0], num_layers=o.num_layers, num_bins=o.num_bins,
                      hidden_units=o.hidden_units, autoregressive=o.autoregressive,
                      seed=o.seed)),
    "residual": Preset("ResidualFlow", events="any", data="any",
                       arguments=lambda o, shape: dict(
                           event_shape=shape, num_blocks=o.num_layers,
                           hidden_units=o.hidden_units, lipschitz=o.lipschitz)),
    "ffjord": Preset("FFJORDFlow", events="any", data="any",
                     arguments=lambda o, shape: dict(
                         event_shape=shape, num_blocks=o.num_layers,
                         hidden_units=o.hidden_units, solver=o.solver,
                         num_steps=o.num_steps, trace=o.trace)),
    "tarflow": Preset("TarFlow", events="images", data="discrete",
                      arguments=lambda o, shape: dict(
                          event_shape=shape, num_blocks=o.num_layers,
                          channels=o.hidden_channels)),
}


def build(name, options, row_shape, num_bits):
  """Builds preset `name` for data rows of shape `row_shape`.

  Args:
    name: a key of `PRESETS`.
    options: `Options`.
    row_shape: shape of one data row, `[D]` or `[H, W, C]`.
    num_bits: bits of integer data (the preset dequantises), or None for continuous.

  Returns:
    `(model, event_shape)`: the uncompiled `FlowModel` and its event shape (image rows
    flattened for vector presets).

  Raises:
    UsageError: if the preset does not exist here, does not model these rows or this
      kind of data, or rejects the options.
  """
  if name not in PRESETS:
    raise UsageError(f"--preset must be one of {', '.join(PRESETS)}; got {name!r}.")
  preset = PRESETS[name]
  factory = getattr(models, preset.factory, None)
  if factory is None:
    raise UsageError(f"--preset={name} needs tfp_flows.models.{preset.factory}, which "
                     "this installation of tfp_flows does not have; pick another preset "
                     f"({', '.join(n for n in PRESETS if n != name)}).")
  row_shape = [int(d) for d in row_shape]
  if preset.events == "images" and len(row_shape) != 3:
    raise UsageError(f"--preset={name} models images [H, W, C]; the data rows have shape "
                     f"{row_shape}. Use --dataset=digits, fashion_mnist or a .npy of images, "
                     "or a vector preset (nsf, residual).")
  event_shape = [math.prod(row_shape)] if preset.events == "vectors" else row_shape
  kwargs = {k: v for k, v in preset.arguments(options, event_shape).items() if v is not None}
  if num_bits:
    kwargs["num_bits"] = num_bits
  elif preset.data == "discrete":
    raise UsageError(f"--preset={name} models integer pixels, and this data is "
                     "continuous; pass --num_bits for integer data, or use nsf or "
                     "residual.")
  try:
    return factory(**kwargs), event_shape
  except ValueError as e:
    raise UsageError(f"--preset={name} rejects these settings: {e}") from None
