"""Keras autoregressive flow layers: a MADE conditioner plus an elementwise transformer."""

import keras
import tensorflow_probability as tfp

from tfp_flows import nets
from tfp_flows.bijectors import autoregressive
from tfp_flows.bijectors import transformers
from tfp_flows.layers import flow_layer
from tfp_flows.layers import spline_coupling

__all__ = ["AutoregressiveLayer", "AffineAutoregressive", "SplineAutoregressive"]


class AutoregressiveLayer(flow_layer.FlowLayer):
  """Owns the `MADE` of a `tfp_flows.bijectors.Autoregressive`; subclasses pick the transformer.

  Direction: by default (MAF) density evaluation, which is what `fit` and `log_prob`
  use, costs one MADE pass and sampling costs D passes. With
  `inverse_autoregressive=True` (IAF) the bijector is `tfb.Invert` of that, so sampling
  costs one pass and density D passes: pick it when sampling speed matters more than
  training speed. The MADE's last layer starts at zero, so the layer starts as the
  identity. A context (when `conditional`) enters every MADE hidden layer.

  Args:
    hidden_units: MADE hidden sizes.
    order: "natural", "reversed", "random" (seeded by `seed`) or an explicit list;
      alternate orders between stacked layers.
    inverse_autoregressive: IAF direction (see above).
    activation: MADE hidden activation.
    seed: seed of a random order.
  """

  def __init__(self, hidden_units=(128, 128), order="natural",
               inverse_autoregressive=False, activation="relu", seed=0, **kwargs):
    super().__init__(**kwargs)
    self.hidden_units = tuple(int(u) for u in hidden_units)
    self.order = order if isinstance(order, str) else [int(i) for i in order]
    self.inverse_autoregressive = bool(inverse_autoregressive)
    self.activation = activation
    self.seed = int(seed)

  def make_transformer(self):
    raise NotImplementedError

  def build(self, inputs_shape, context_shape=None):
    """Creates the MADE's weights for inputs `[N, D]` (and a context `[N, C]`).

    The weights exist after `build`, so Keras' standard build path (a symbolic call,
    `.keras` loading) restores them. Built without `context_shape` (FlowModel's
    constructor builds its flow, then calls it with a context), a conditional layer
    creates the MADE's weights on the first call.

    Raises:
      ValueError: for inputs that are not `[N, D]`.
    """
    if len(inputs_shape) != 2 or inputs_shape[-1] is None:
      raise ValueError("Autoregressive layers take vectors [N, D] with a known D; got "
                       f"input shape {inputs_shape}.")
    self.event_size = int(inputs_shape[-1])
    self.net = nets.MADE(self.event_size, self.make_transformer().num_params,
                         hidden_units=self.hidden_units, activation=self.activation,
                         order=self.order, seed=self.seed, dtype=self.dtype_policy,
                         name="made")
    if not self.conditional or context_shape is not None:
      self.net.build((None, self.event_size),
                     None if context_shape is None else (None, int(context_shape[-1])))
    super().build(inputs_shape, context_shape)

  def _conditioner(self, y, context=None):
    return self.net(y, context)

  def make_bijector(self):
    name = self.bijector_name("_autoregressive" if self.inverse_autoregressive else "")
    bijector = autoregressive.Autoregressive(
        self._conditioner, self.make_transformer(), self.event_size,
        conditional=self.conditional, dtype=self.compute_dtype, name=name)
    if self.inverse_autoregressive:
      return tfp.bijectors.Invert(bijector, name=self.bijector_name())
    return bijector

  def get_config(self):
    return {**super().get_config(), "hidden_units": list(self.hidden_units),
            "order": self.order, "inverse_autoregressive": self.inverse_autoregressive,
            "activation": self.activation, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfp_flows")
class AffineAutoregressive(AutoregressiveLayer):
  """Affine autoregressive layer: MAF (default) or IAF, `y_i = s_i z_i + t_i`.

  Args:
    scale: "exp" (soft clamped, default) or "sigmoid"; see
      `tfp_flows.bijectors.AffineTransformer`.
    clamp: bound on |log s| for scale="exp".
    **kwargs: `AutoregressiveLayer` arguments.
  """

  def __init__(self, scale="exp", clamp=3.0, **kwargs):
    super().__init__(**kwargs)
    self.scale = scale
    self.clamp = float(clamp)
    self.make_transformer()  # validates scale and clamp now

  def make_transformer(self):
    return transformers.AffineTransformer(self.scale, self.clamp)

  def get_config(self):
    return {**super().get_config(), "scale": self.scale, "clamp": self.clamp}


@keras.saving.register_keras_serializable(package="tfp_flows")
class SplineAutoregressive(AutoregressiveLayer):
  """Autoregressive neural spline flow layer (rational-quadratic spline per coordinate).

  Args:
    num_bins: spline bins K.
    bound: the spline acts on [-bound, bound]; identity outside.
    circular: periodic spline on [-bound, bound] (for angles) instead of linear tails.
    **kwargs: `AutoregressiveLayer` arguments.
  """

  def __init__(self, num_bins=8, bound=3.0, circular=False, **kwargs):
    super().__init__(**kwargs)
    self.num_bins = num_bins
    self.bound = float(bound)
    self.circular = bool(circular)
    self.make_transformer()  # validates now: num_bins=2.5 is an error, not 2 bins
    self.num_bins = int(num_bins)

  def make_transformer(self):
    return spline_coupling.spline_transformer(self.num_bins, self.bound, self.circular)

  def get_config(self):
    return {**super().get_config(), "num_bins": self.num_bins, "bound": self.bound,
            "circular": self.circular}
