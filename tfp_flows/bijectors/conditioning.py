"""Routing a conditional input through TFP's per-bijector keyword arguments."""

import tensorflow_probability as tfp
from tensorflow_probability.python.bijectors import invert as invert_lib

__all__ = ["is_conditional", "conditional_kwargs"]

tfb = tfp.bijectors
# tfb.Invert of a non-composite-tensor bijector (any bijector holding a callable) is an
# instance of TFP's `_Invert` base, not of `tfb.Invert`.
_INVERT_TYPES = (tfb.Invert, invert_lib._Invert)  # pylint: disable=protected-access


def is_conditional(bijector):
  """True if `bijector`, or a bijector inside its compositions and inverts, is conditional."""
  if isinstance(bijector, tfb.Composition):
    return any(is_conditional(b) for b in bijector.bijectors)
  if isinstance(bijector, _INVERT_TYPES):
    return is_conditional(bijector.bijector)
  return bool(getattr(bijector, "is_conditional", False))


def conditional_kwargs(bijector, conditional_input):
  """Keyword arguments that pass `conditional_input` to every conditional bijector inside.

  TFP routes keyword arguments through `tfb.Chain` by bijector name
  (`chain.forward(x, **{name: kwargs})`) and through `tfb.Invert` unchanged, so the
  result is a nested dict mirroring the composition. Returns `{}` when
  `conditional_input` is None or nothing inside is conditional.
  """
  if conditional_input is None or not is_conditional(bijector):
    return {}
  if isinstance(bijector, tfb.Composition):
    return {b.name: conditional_kwargs(b, conditional_input)
            for b in bijector.bijectors if is_conditional(b)}
  if isinstance(bijector, _INVERT_TYPES):
    return conditional_kwargs(bijector.bijector, conditional_input)
  return {"conditional_input": conditional_input}
