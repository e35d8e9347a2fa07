"""The presets' `dtype=`: the dtype policy of every layer they build and of the model."""

import keras

__all__ = ["layer_arguments"]

_FLOATS = ("float32", "float64")


def layer_arguments(preset, dtype):
  """`{"dtype": dtype}` for each layer and the model a preset builds; `{}` for the global policy.

  Flow layers compute in float32 or float64 throughout. A mixed precision policy, given
  as `dtype` or set globally with `dtype=None`, would stop the preset at its first flow
  layer with that layer's message; this names the preset's argument instead.

  Args:
    preset: the preset's name, for the messages.
    dtype: None (Keras' global policy), "float32", "float64" or a `keras.DTypePolicy`
      of one of them.

  Raises:
    ValueError: for a policy that does not compute in float32 or float64 throughout.
  """
  policy = keras.config.dtype_policy() if dtype is None else keras.dtype_policies.get(dtype)
  if policy.compute_dtype != policy.variable_dtype:
    raise ValueError(
        f"{preset} does not support the mixed precision policy {policy.name!r}: flow "
        f"layers compute in float32 or float64. Pass dtype='float32' to {preset} (other "
        f"models may keep {policy.name!r}).")
  if policy.compute_dtype not in _FLOATS:
    given = "the global policy" if dtype is None else "dtype"
    raise ValueError(f"{preset} computes in float32 or float64; {given} is "
                     f"{policy.name!r}. Pass dtype='float32' or dtype='float64'.")
  return {} if dtype is None else {"dtype": dtype}
