"""Keras invertible residual block: a Lipschitz-constrained network and its log-det estimator."""

import math

import keras
import tensorflow as tf

from tfp_flows import nets
from tfp_flows.bijectors import residual
from tfp_flows.layers import _replica_seed
from tfp_flows.layers import flow_layer
from tfp_flows.numerics import checks
from tfp_flows.numerics import estimators

__all__ = ["ResidualBlock"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class ResidualBlock(flow_layer.FlowLayer):
  """Residual-flow block `z = y + g(y)` (data -> base), g spectrally normalised.

  g is `SpectralNormDense` layers (vectors) or 3x3 / 1x1 / 3x3 `SpectralNormConv2D`
  layers (images) with `LipSwish` activations between them; each normalised layer has
  spectral norm at most `lipschitz`, and LipSwish is 1-Lipschitz, so Lip(g) <= lipschitz.

  Which log-det estimator is in effect depends on the mode, and `log_det_mode(training)`
  says which, by the rule of `log_det_estimator` (a
  `tfp_flows.numerics.estimators.LogDetEstimator`, made from `log_det`,
  `num_exact_terms`, `gradient` and `exact_max_dims` unless given):

  * training (`fit`, `model(x, training=True)`): `log_det` ("russian_roulette" by
    default: unbiased, `num_exact_terms` terms always computed), with probes and counts
    seeded per step from the layer's `keras.random.SeedGenerator` (independently on
    every `tf.distribute` replica), so `keras.utils.set_random_seed` makes runs
    repeatable, under XLA too;
  * evaluation (`log_prob`, `.bijector`, `model.distribution`, export): "exact" (dense
    Jacobian; deterministic) when the event has at most `exact_max_dims` entries, else
    a "series" whose truncation bias `D L^(n+1) / ((n+1)(1 - L))` is below 1e-3 nats,
    with one Rademacher probe per point keyed by the point's values and a fixed seed:
    deterministic, the same for a point alone or in any batch, and unbiased up to that
    bias, but a one-probe Hutchinson estimate whose per-point error can be of order 1
    nat near `lipschitz = 1` (it averages out over a test set; raise `exact_max_dims`
    for exact per-point values).

  Sampling inverts the block by fixed-point iteration (`tolerance`, `max_iterations`);
  rows that do not converge come back as NaN in every mode, XLA included, and also raise
  with `validate_args=True` where TensorFlow can raise (see
  `tfp_flows.bijectors.ResidualBlock`).

  `num_exact_terms` is the library's spelling (that of `ResidualFlow`, `LogDetEstimator`
  and `tfp_flows.numerics.log_det_series`; counts are `num_*`); `n_exact_terms` is the
  older alias, still accepted, and `.keras` files whose config has it still load.

  Args:
    hidden_units: hidden sizes of g (vectors) or hidden channels (images: the first).
    lipschitz: spectral-norm coefficient c in (0, 1) of every layer of g.
    log_det: training estimator: "russian_roulette", "series" or "exact".
    num_exact_terms: terms always computed by the roulette (or all terms of "series");
      default 2.
    gradient: "neumann" (memory flat in the terms) or "backprop".
    exact_max_dims: largest event size evaluated with the exact log-det.
    log_det_estimator: a `LogDetEstimator` (or its config dict) for the whole rule; it
      takes the place of `log_det`, `num_exact_terms`, `gradient` and `exact_max_dims`.
    tolerance, max_iterations: fixed-point inverse settings (`tolerance` relative to
      `max(1, max|z_row|)`, see `tfp_flows.bijectors.fixed_point_solve`). They set how
      exactly samples (the base -> data map) are computed, in float64 too: lower
      `tolerance` for float64 accuracy, and raise `max_iterations` with it (each
      iteration shrinks the error by at least the Lipschitz constant; a row that runs
      out of iterations is NaN, never a rougher answer). They do not affect the density
      (data -> base).
    power_iterations: power-iteration steps per training call of every spectrally
      normalised layer (`num_iterations`). One step tracks slowly moving kernels; fast
      training of convolutions can outrun it (a 12x12 conv fit at learning rate 3e-3
      reached norms of 1.06-1.08 for c = 0.97 with 1 step, at most 1.03 with 5), which
      makes g non-contractive during training; evaluation is certified either way.
    validate_args: also raise `InvalidArgumentError` when the fixed-point inverse does
      not converge (whose rows are NaN in every mode, XLA included) or an input is not
      finite.
    seed: seed of the layer's SeedGenerator (None: from Keras' global seed).
    n_exact_terms: older alias of `num_exact_terms` (pass one of the two).

  Raises:
    ValueError: for an argument outside its range, or `num_exact_terms` passed in both
      spellings.
  """

  def __init__(self, hidden_units=(128, 128), lipschitz=0.97, log_det="russian_roulette",
               num_exact_terms=None, gradient="neumann", exact_max_dims=256,
               tolerance=1e-5, max_iterations=200, power_iterations=1,
               log_det_estimator=None, validate_args=False, seed=None, *,
               n_exact_terms=None, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 < float(lipschitz) < 1.0:
      raise ValueError("lipschitz must be in (0, 1): y + g(y) is invertible only if "
                       f"Lip(g) < 1; got {lipschitz!r}.")
    if log_det_estimator is None:
      log_det_estimator = estimators.LogDetEstimator(
          training=log_det, gradient=gradient, num_exact_terms=num_exact_terms,
          exact_max_dims=exact_max_dims, n_exact_terms=n_exact_terms)
    self.log_det_estimator = estimators.LogDetEstimator.from_spec(log_det_estimator)
    self.hidden_units = tuple(int(u) for u in hidden_units)
    if not self.hidden_units or min(self.hidden_units) < 1:
      raise ValueError(f"hidden_units must be positive sizes; got {hidden_units!r}.")
    if not float(tolerance) > 0.0:
      raise ValueError(f"tolerance must be positive; got {tolerance!r}.")
    for name, value in (("max_iterations", max_iterations),
                        ("power_iterations", power_iterations)):
      if not checks.is_int_at_least(value, 1):
        raise ValueError(f"{name} must be an int >= 1; got {value!r}.")
    self.lipschitz = float(lipschitz)
    self.tolerance = float(tolerance)
    self.max_iterations = int(max_iterations)
    self.validate_args = bool(validate_args)
    self.power_iterations = int(power_iterations)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed, name="residual_seed")

  def build(self, input_shape):
    event_shape = [int(d) for d in input_shape[1:]]
    if len(event_shape) not in (1, 3):
      raise ValueError("ResidualBlock takes vectors [N, D] or images [N, H, W, C]; got "
                       f"input shape {input_shape}.")
    self._event_shape = event_shape
    # The sublayers share this layer's dtype policy (float64 blocks stay float64).
    common = {"lipschitz": self.lipschitz, "num_iterations": self.power_iterations,
              "dtype": self.dtype_policy}
    if len(event_shape) == 1:
      sizes = list(self.hidden_units) + [event_shape[0]]
      self._net = [nets.SpectralNormDense(u, name=f"dense_{i}", **common)
                   for i, u in enumerate(sizes)]
    else:
      width = self.hidden_units[0]
      self._net = [
          nets.SpectralNormConv2D(width, 3, name="conv_0", **common),
          nets.SpectralNormConv2D(width, 1, name="conv_1", **common),
          nets.SpectralNormConv2D(event_shape[-1], 3, name="conv_2", **common)]
    self._activations = [nets.LipSwish(name=f"lip_swish_{i}", dtype=self.dtype_policy)
                         for i in range(len(self._net) - 1)]
    shape = tuple(input_shape)
    for i, layer in enumerate(self._net):
      layer.build(shape)
      shape = tuple(layer.compute_output_shape(shape))
      if i < len(self._activations):
        self._activations[i].build(shape)
    super().build(input_shape)

  @property
  def event_size(self):
    return math.prod(self._event_shape)

  @property
  def log_det(self):
    """The training estimator, "russian_roulette", "series" or "exact"."""
    return self.log_det_estimator.training

  @property
  def num_exact_terms(self):
    """Terms the roulette always computes (all terms of the "series" estimator)."""
    return self.log_det_estimator.num_exact_terms

  @property
  def n_exact_terms(self):
    """Older alias of `num_exact_terms`."""
    return self.num_exact_terms

  @property
  def gradient(self):
    return self.log_det_estimator.gradient

  @property
  def exact_max_dims(self):
    return self.log_det_estimator.exact_max_dims

  def residual_fn(self, training=False):
    """g as a callable on `[N, *event]`, its normalised kernels computed once now.

    The power iteration runs here (updating the persistent vectors when `training`),
    not on every call of g, so a fixed-point solve that calls g many times costs no
    extra power iterations.
    """
    kernels = [layer.kernel_for_call(training) for layer in self._net]

    def g(y):
      h = y
      for i, (layer, kernel) in enumerate(zip(self._net, kernels)):
        h = layer.apply_kernel(h, kernel)
        if i < len(self._activations):
          h = self._activations[i](h)
      return h
    return g

  def norm_methods(self, training=False):
    """How each spectrally normalised layer bounds its norm (`norm_method`), in order:
    power iteration in training; in evaluation a Gram-iteration or Fourier bound."""
    return [layer.norm_method(training) for layer in self._net]

  def log_det_mode(self, training=False):
    """The estimator in effect: "exact", "series (n terms)" or the training estimator."""
    return self.log_det_estimator.describe(training, self.event_size,
                                           lipschitz=self.lipschitz)

  def make_bijector(self, training=False, seed=None):
    estimator = self.log_det_estimator.choose(training, self.event_size,
                                              lipschitz=self.lipschitz)
    if estimator.method != "exact" and estimator.seed is None and seed is None:
      seed = _replica_seed.draw_replica_seed(self.seed_generator)
    return residual.ResidualBlock(
        make_residual_fn=lambda: self.residual_fn(training),
        event_ndims=len(self._event_shape), log_det=estimator,
        gradient=self.gradient, seed=seed, num_exact_terms=self.num_exact_terms,
        distribution=self.log_det_estimator.distribution, tolerance=self.tolerance,
        max_iterations=self.max_iterations, validate_args=self.validate_args,
        dtype=self.compute_dtype, name=self.bijector_name())

  def call(self, inputs, context=None, training=None):
    bijector = self.make_bijector(training=bool(training))
    z = bijector.inverse(inputs)
    ildj = bijector.inverse_log_det_jacobian(inputs, event_ndims=len(self._event_shape))
    return z, ildj + tf.zeros(tf.shape(inputs)[:1], inputs.dtype)

  def get_config(self):
    return {**super().get_config(), "hidden_units": list(self.hidden_units),
            "lipschitz": self.lipschitz, "log_det": self.log_det,
            "num_exact_terms": self.num_exact_terms, "gradient": self.gradient,
            "exact_max_dims": self.exact_max_dims, "tolerance": self.tolerance,
            "max_iterations": self.max_iterations,
            "power_iterations": self.power_iterations,
            "log_det_estimator": self.log_det_estimator.get_config(),
            "validate_args": self.validate_args, "seed": self.seed}
