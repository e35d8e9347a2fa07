"""The generic autoregressive bijector: MAF, IAF and autoregressive neural spline flows."""

import tensorflow as tf

from tfp_flows.bijectors import _tfp_glue
from tfp_flows.bijectors import network_bijector

__all__ = ["Autoregressive"]


class Autoregressive(_tfp_glue.OnePassLogDet, network_bijector.NetworkBijector):
  """Autoregressive flow: each coordinate transformed given the ones before it.

  With an autoregressive conditioner `h` (such as `tfp_flows.nets.MADE`: output row `i`
  depends only on the data coordinates that precede `i` in its ordering) and an
  elementwise transformer `T` (affine, additive, rational-quadratic spline):

  ```none
  forward  (base z -> data y):  y_i = T(z_i; h(y)_i)      sequential: D network passes
  inverse  (data y -> base z):  z_i = T^{-1}(y_i; h(y)_i) parallel:   one network pass
  log-det:  log|det dy/dz| = sum_i log|T'(z_i; h(y)_i)|   (triangular Jacobian)
  ```

  The conditioner always reads the data side `y`, so density evaluation
  (`log_prob` -> `inverse`) is the cheap direction: one network pass, the masked
  autoregressive flow (MAF) of Papamakarios et al. Sampling (`forward`) fixes one more
  coordinate per pass: starting from `y = 0`, `D` iterations of
  `y <- T(z; h(y))` in a `tf.while_loop` (XLA-compilable) make every coordinate exact
  whatever the ordering. For cheap sampling instead (IAF, Kingma et al.), use
  `tfb.Invert(Autoregressive(...))`, whose density is then the D-pass direction.
  Each direction computes its log-det in the same pass as its value.

  With `conditioner(y, conditional_input)` the flow is conditional: pass
  `conditional_input=` to the bijector methods, or `bijector_kwargs` in TFP
  distributions (see `tfp_flows.bijectors.conditional_kwargs`).

  All-zero conditioner output gives the identity for every transformer here.

  #### References

  [1]: Papamakarios, Pavlakou, Murray. Masked Autoregressive Flow for Density
       Estimation. https://arxiv.org/abs/1705.07057
  [2]: Kingma et al. Improved Variational Inference with Inverse Autoregressive Flow.
       https://arxiv.org/abs/1606.04934
  [3]: Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows.
       https://arxiv.org/abs/1906.04032
  """

  def __init__(self, conditioner, transformer, event_size, conditional=False,
               validate_args=False, dtype=tf.float32, name="autoregressive"):
    """Creates the bijector.

    Args:
      conditioner: callable `(y) -> h` or `(y, conditional_input) -> h` with
        `h.shape == y.shape + [transformer.num_params]`, autoregressive in `y`.
      transformer: a `tfp_flows.bijectors.transformers.Transformer`.
      event_size: `D`, the length of the event vector (the number of forward passes).
      conditional: whether the conditioner takes `conditional_input`.
      validate_args: if True, check that inputs and conditioner outputs are finite.
      dtype: float dtype of the inputs.
      name: name of the bijector.

    Raises:
      ValueError: for a non-callable conditioner, a missing transformer or
        `event_size < 1`.
    """
    parameters = dict(locals())
    if int(event_size) < 1:
      raise ValueError(f"event_size must be a positive int; got {event_size!r}.")
    self._event_size = int(event_size)
    super().__init__(
        conditional=conditional, conditioner=conditioner, transformer=transformer,
        forward_min_event_ndims=1, dtype=tf.as_dtype(dtype), validate_args=validate_args,
        parameters=parameters, name=name)

  @property
  def event_size(self):
    return self._event_size

  def _params(self, y, conditional_input):
    h = self._call_conditioner(y, 1, conditional_input, "Autoregressive")
    expected = [self._event_size, self._transformer.num_params]
    if h.shape.rank is not None and h.shape[-2:].as_list() != expected:
      raise ValueError(f"The conditioner must return shape [..., {expected[0]}, "
                       f"{expected[1]}]; got {h.shape.as_list()}.")
    return h

  def _check_input(self, x):
    if x.shape[-1] is not None and x.shape[-1] != self._event_size:
      raise ValueError(f"{self.name} expects events of size {self._event_size}; got "
                       f"shape {x.shape.as_list()}.")
    if self.validate_args:
      x = tf.debugging.assert_all_finite(x, "Autoregressive: input is not finite.")
    return x

  def _inverse_and_log_det(self, y, conditional_input):
    y = self._check_input(y)
    x, log_det = self._transformer.inverse(y, self._params(y, conditional_input))
    return x, tf.reduce_sum(log_det, axis=-1)

  def _forward_and_log_det(self, z, conditional_input):
    z = self._check_input(z)

    def body(y, log_det):
      del log_det
      return self._transformer.forward(z, self._params(y, conditional_input))

    # After pass k the first k coordinates in the conditioner's ordering are exact, so
    # D passes finish; the last pass's log-det uses exact parameters throughout.
    y, log_det = tf.while_loop(
        lambda y, log_det: True, body, (tf.zeros_like(z), tf.zeros_like(z)),
        maximum_iterations=self._event_size)
    return y, tf.reduce_sum(log_det, axis=-1)

