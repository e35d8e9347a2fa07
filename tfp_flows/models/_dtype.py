"""The presets' `dtype=`: the dtype policy of every layer they build and of the model."""

import keras

__all__ = ["layer_arguments"]


def layer_arguments(preset, dtype):
  """`{"dtype": dtype}` for each layer and the model a preset builds; `{}` for the global policy.

  Flow layers compute in float32 or float64 throughout. Under a global mixed precision
  policy a preset built with `dtype=None` would stop at its first flow layer with that
  layer's message; this names the preset's argument instead.

  Args:
    preset: the preset's name, for the message.
    dtype: None (Keras' global policy), "float32", "float64" or a `keras.DTypePolicy`
      of one of them.

  Raises:
    ValueError: with `dtype=None` under a global mixed precision policy.
  """
  if dtype is not None:
    return {"dtype": dtype}
  policy = keras.config.dtype_policy()
  if policy.compute_dtype != policy.variable_dtype:
    raise ValueError(
        f"{preset} does not support the mixed precision policy {policy.name!r}: flow "
        f"layers compute in float32 or float64. Pass dtype='float32' to {preset} (other "
        f"models may keep {policy.name!r}).")
  return {}
