"""Keras autoregressive flow layers: a MADE conditioner plus an elementwise transformer.

`Autoregressive(transformer=...)` is the one autoregressive layer; `AffineAutoregressive`
and `SplineAutoregressive` are it with a fixed transformer and that transformer's
arguments spelled out, kept for their callers and saved configs.
"""

import keras
import tensorflow_probability as tfp

from tfp_flows import nets
from tfp_flows.bijectors import autoregressive
from tfp_flows.layers import _random_order
from tfp_flows.layers import flow_layer
from tfp_flows.layers import transformer_spec

__all__ = ["Autoregressive", "AutoregressiveLayer", "AffineAutoregressive",
           "SplineAutoregressive"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class Autoregressive(flow_layer.FlowLayer):
  """Owns the `MADE` of a `tfp_flows.bijectors.Autoregressive` with any elementwise transformer.

  Each coordinate is transformed given the data-side coordinates before it in `order`
  (row i of the MADE output h(y) reads only those):

  ```none
  inverse (data -> base):  z_i = T^{-1}(y_i; h(y)_i)  one MADE pass (parallel)
  forward (base -> data):  y_i = T(z_i; h(y)_i)       D MADE passes (sequential)
  ```

  with T the transformer (affine: MAF / IAF; rational-quadratic spline: autoregressive
  NSF) and h the MADE. Direction: by default (MAF) density evaluation, which is what
  `fit` and `log_prob` use, costs one MADE pass and sampling costs D passes. With
  `inverse_autoregressive=True` (IAF) the bijector is `tfb.Invert` of that, so sampling
  costs one pass and density D passes: pick it when sampling speed matters more than
  training speed. The MADE's last layer starts at zero, so the layer starts as the
  identity. A context (when `conditional`) enters every MADE hidden layer.

  Args:
    transformer: the elementwise transformer: a `tfp_flows.bijectors.Transformer`, a
      name ("affine", "additive", "rational_quadratic", "circular_rational_quadratic")
      for its defaults, or `{"name": ..., "config": {...}}` (what `get_config` writes);
      see `tfp_flows.layers.transformer_spec`.
    hidden_units: MADE hidden sizes.
    order: "natural", "reversed", "random" (seeded by `seed`) or an explicit list;
      alternate orders between stacked layers.
    inverse_autoregressive: IAF direction (see above).
    activation: MADE hidden activation.
    seed: seed of a random order; None (the default) draws one from NumPy's global
      generator (which `keras.utils.set_random_seed` seeds), so stacked layers get
      different orders. The seed is saved in the config.
  """

  def __init__(self, transformer, hidden_units=(128, 128), order="natural",
               inverse_autoregressive=False, activation="relu", seed=None, **kwargs):
    super().__init__(**kwargs)
    self.transformer = transformer_spec.get(transformer)
    self.hidden_units = tuple(int(u) for u in hidden_units)
    self.order = order if isinstance(order, str) else [int(i) for i in order]
    self.inverse_autoregressive = bool(inverse_autoregressive)
    self.activation = activation
    self.seed = _random_order.seed_of(seed, self.order)

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
    self.net = nets.MADE(self.event_size, self.transformer.num_params,
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
        self._conditioner, self.transformer, self.event_size,
        conditional=self.conditional, dtype=self.compute_dtype, name=name)
    if self.inverse_autoregressive:
      return tfp.bijectors.Invert(bijector, name=self.bijector_name())
    return bijector

  def get_config(self):
    return {**super().get_config(), "transformer": transformer_spec.serialize(self.transformer),
            "hidden_units": list(self.hidden_units),
            "order": self.order, "inverse_autoregressive": self.inverse_autoregressive,
            "activation": self.activation, "seed": self.seed}


AutoregressiveLayer = Autoregressive  # The former name of the base class, kept for callers.


@keras.saving.register_keras_serializable(package="tfp_flows")
class AffineAutoregressive(transformer_spec.AffineArguments, Autoregressive):
  """Affine autoregressive layer: MAF (default) or IAF, `y_i = s_i z_i + t_i`.

  `Autoregressive(transformer=AffineTransformer(scale, clamp), ...)`, with the
  transformer's arguments as the layer's own (and in its config).

  Args:
    scale: "exp" (soft clamped, default) or "sigmoid"; see
      `tfp_flows.bijectors.AffineTransformer`.
    clamp: bound on |log s| for scale="exp".
    **kwargs: `Autoregressive` arguments.
  """

  def __init__(self, scale="exp", clamp=3.0, **kwargs):
    super().__init__(scale, clamp, **kwargs)


@keras.saving.register_keras_serializable(package="tfp_flows")
class SplineAutoregressive(transformer_spec.SplineArguments, Autoregressive):
  """Autoregressive neural spline flow layer (rational-quadratic spline per coordinate).

  `Autoregressive(transformer=spline_transformer(num_bins, bound, circular), ...)`, with
  the transformer's arguments as the layer's own (and in its config).

  Args:
    num_bins, bound, circular: the spline's bins K, its interval [-bound, bound] and
      whether it is periodic there; as for `SplineCoupling`.
    **kwargs: `Autoregressive` arguments.
  """

  def __init__(self, num_bins=8, bound=3.0, circular=False, **kwargs):
    super().__init__(num_bins, bound, circular, **kwargs)
