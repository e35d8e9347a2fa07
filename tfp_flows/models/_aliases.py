"""Preset arguments with two spellings: the library's one and an older alias kept for callers.

The library spells a concept one way across bijectors, layers, `FlowModel` and presets
(`event_shape`, `num_blocks`, `log_det`, `num_exact_terms`, `objective`, ...). Where a
preset first shipped another spelling, it takes both: the signature gives each None, and
`resolve` picks the one the caller passed, or the default.
"""

__all__ = ["resolve"]


def resolve(name, value, alias, alias_value, default):
  """The value of argument `name`, which callers may also spell `alias` (the older name).

  Args:
    name: the library's spelling, e.g. "num_blocks".
    value: what the caller passed as `name` (None if nothing).
    alias: the older spelling, e.g. "num_layers".
    alias_value: what the caller passed as `alias` (None if nothing).
    default: the value when neither is passed.

  Returns:
    `value` if given, else `alias_value` if given, else `default`.

  Raises:
    ValueError: if both spellings are passed (even with equal values): one argument
      given twice is ambiguous, so the caller must keep one.
  """
  if value is not None and alias_value is not None:
    raise ValueError(f"{name}= and {alias}= are two spellings of one argument ({alias} is "
                     f"the older one); got {name}={value!r} and {alias}={alias_value!r}. "
                     f"Pass only {name}=.")
  if value is not None:
    return value
  return default if alias_value is None else alias_value
