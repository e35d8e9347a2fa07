"""The base of the bijectors whose parameters are computed by a callable (a network)."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import batching
from tfp_flows.bijectors import transformers as transformers_lib

__all__ = ["NetworkBijector"]

tfb = tfp.bijectors

# Marks a bijector without a conditioner (as opposed to a bad `conditioner=None`).
_NO_CONDITIONER = object()


class NetworkBijector(tfb.Bijector):
  """A bijector parameterised by a callable, optionally given a conditional input.

  Couplings, autoregressive flows, residual blocks, continuous flows and the learned
  prior all compute their parameters with a user callable (a Keras network or a plain
  function) instead of holding a batch of parameter tensors, so, like stock
  `tfb.RealNVP` and `tfb.MaskedAutoregressiveFlow`, they are a single (unbatched)
  transform: `experimental_batch_shape() == []` and `_parameter_properties` is empty.

  A conditional one (`conditional=True`) must be given `conditional_input=` in every
  call, and an unconditional one must not be: a context passed to a bijector that would
  ignore it is an error, never silently dropped.

  Subclasses pass their own `parameters=dict(locals())` and the `tfb.Bijector` keyword
  arguments through; the transformer-based ones (`Coupling`, `Autoregressive`,
  `TransformerAutoregressive`) also pass `conditioner` and `transformer`.
  """

  def __init__(self, *, conditional=False, conditioner=_NO_CONDITIONER, transformer=None,
               **bijector_kwargs):
    """Creates the bijector.

    Args:
      conditional: whether calls take `conditional_input`.
      conditioner: the callable computing the transformer's parameters, for the
        subclasses that have one (omitted otherwise); checked to be callable.
      transformer: the `tfp_flows.bijectors.transformers.Transformer` the conditioner
        parameterises; required with a conditioner.
      **bijector_kwargs: passed to `tfb.Bijector.__init__`.

    Raises:
      ValueError: for a non-callable conditioner, or a conditioner without a
        `Transformer`.
    """
    if conditioner is _NO_CONDITIONER:
      conditioner = None
    else:
      if not callable(conditioner):
        raise ValueError(f"conditioner must be callable; got {conditioner!r}.")
      if not isinstance(transformer, transformers_lib.Transformer):
        raise ValueError(
            "transformer must be a tfp_flows.bijectors.transformers.Transformer such as "
            f"AffineTransformer(); got {transformer!r}.")
    self._conditional = bool(conditional)
    self._conditioner = conditioner
    self._transformer = transformer
    super().__init__(**bijector_kwargs)

  @classmethod
  def _parameter_properties(cls, dtype):
    return {}

  @property
  def is_conditional(self):
    return self._conditional

  @property
  def conditioner(self):
    return self._conditioner

  @property
  def transformer(self):
    return self._transformer

  def _check_conditional_input(self, conditional_input):
    """Raises unless `conditional_input` is given exactly when the bijector is conditional."""
    if conditional_input is not None and not self._conditional:
      raise ValueError(
          f"{self.name} got a conditional_input but was built with conditional=False: "
          "conditional_input must be given exactly when the bijector is built with "
          "conditional=True.")
    if conditional_input is None and self._conditional:
      raise ValueError(
          f"{self.name} is conditional: pass conditional_input= (conditional_input must "
          "be given exactly when the bijector is built with conditional=True).")


  def _call_conditioner(self, x, event_ndims, conditional_input, label):
    """The conditioner's output on `x` (any batch shape), checked as `validate_args` asks.

    Args:
      x: the conditioner's input, batch dimensions then `event_ndims` event dimensions.
      event_ndims: rank of one event of `x`.
      conditional_input: the context, or None.
      label: the bijector kind named in the non-finite error ("Coupling").
    """
    self._check_conditional_input(conditional_input)
    h = batching.call_on_flat_batch(self._conditioner, x, event_ndims, conditional_input)
    h = tf.convert_to_tensor(h, dtype=self.dtype)
    if self.validate_args:
      h = tf.debugging.assert_all_finite(h, f"{label}: conditioner output is not finite.")
    return h
