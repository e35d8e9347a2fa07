"""Preset arguments with two spellings: the library's one and an older alias kept for callers.

`resolve` lives in `tfp_flows.numerics.aliases`, shared with the layers and nets that
also take an older spelling beside the library's. `image_event_shape` reads the shape of
one image of the image presets (Glow, TarFlow), spelled `event_shape` as in `FlowModel`
or `image_shape` as those presets first had it.
"""

from tfp_flows.numerics.aliases import resolve

__all__ = ["image_event_shape", "resolve"]


def image_event_shape(preset, event_shape, image_shape):
  """`[H, W, C]` as ints, from `event_shape=` or its older alias `image_shape=`.

  Args:
    preset: the preset's name, for the messages.
    event_shape: what the caller passed as `event_shape` (None if nothing).
    image_shape: what the caller passed as `image_shape` (None if nothing).

  Raises:
    ValueError: if neither or both are passed, or the shape is not three positive sizes.
  """
  shape = resolve("event_shape", event_shape, "image_shape", image_shape, None)
  if shape is None:
    raise ValueError(f"{preset} needs the image shape: pass event_shape=[H, W, C].")
  shape = [int(d) for d in shape]
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"{preset} models images: event_shape must be [H, W, C] with "
                     f"positive sizes; got {shape}.")
  return shape
