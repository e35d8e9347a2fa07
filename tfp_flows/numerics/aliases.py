"""Arguments with two spellings: the library's one and an older alias kept for callers.

The library spells a concept one way across numerics, bijectors, nets, layers,
`FlowModel` and presets (`event_shape`, `num_blocks`, `log_det`, `num_exact_terms`,
`lipschitz`, `objective`, ...). Where a function or class first shipped another spelling,
it takes both: the signature gives each None, and `resolve` picks the one the caller
passed, or the default. A Keras layer's `get_config` writes the library's spelling, and
its `from_config` still reads a config with the older one (it arrives as the alias
keyword), so `.keras` files written before the rename keep loading.
"""

__all__ = ["resolve", "spelling"]


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


def spelling(name, alias, alias_value):
  """The spelling the caller used (`alias` if `alias_value` was passed, else `name`).

  Error messages about the value quote the name the caller wrote.
  """
  return name if alias_value is None else alias
