"""How a layer names its elementwise transformer: an instance, a name, or a name + config.

The generic `Coupling` and `Autoregressive` layers take `transformer=` as

* a `tfp_flows.bijectors.Transformer` instance, used as given;
* a name from `NAMES` ("affine", "additive", "rational_quadratic",
  "circular_rational_quadratic"), built with that transformer's defaults;
* a dict `{"name": name, "config": {...}}`, built as `Class(**config)`: the form
  `serialize` writes into a layer's `get_config`, so `.keras` files round-trip.

The older layers that spell the transformer as its own arguments (`scale=`/`clamp=`,
`num_bins=`/`bound=`/`circular=`) are the generic layers with one of the two argument
mixins below, which keep those arguments in `get_config`, so configs written before the
generic layers existed still load.
"""

from tfp_flows.bijectors import spline
from tfp_flows.bijectors import transformers

__all__ = ["NAMES", "get", "serialize", "spline_transformer", "AffineArguments",
           "SplineArguments"]

_CLASSES = {
    "affine": transformers.AffineTransformer,
    "additive": transformers.AdditiveTransformer,
    "rational_quadratic": spline.RationalQuadraticTransformer,
    "circular_rational_quadratic": spline.CircularRationalQuadraticTransformer,
}
NAMES = tuple(_CLASSES)


def get(spec):
  """Returns the `Transformer` that `spec` (instance, name, or name + config) stands for.

  Raises:
    ValueError: for an unknown name, a dict without exactly the keys "name" and
      "config", or a config the transformer rejects.
    TypeError: for anything else.
  """
  if isinstance(spec, transformers.Transformer):
    return spec
  if isinstance(spec, str):
    spec = {"name": spec, "config": {}}
  if not isinstance(spec, dict):
    raise TypeError("transformer must be a tfp_flows.bijectors.Transformer, one of "
                    f"{NAMES}, or {{'name': ..., 'config': {{...}}}}; got {spec!r}.")
  if set(spec) != {"name", "config"}:
    raise ValueError("A transformer given as a dict needs exactly the keys 'name' and "
                     f"'config'; got {spec!r}.")
  if spec["name"] not in _CLASSES:
    raise ValueError(f"Unknown transformer {spec['name']!r}; use one of {NAMES} or pass "
                     "a tfp_flows.bijectors.Transformer instance.")
  return _CLASSES[spec["name"]](**spec["config"])


def serialize(transformer):
  """Returns `{"name": ..., "config": ...}` such that `get` of it equals `transformer`.

  Raises:
    ValueError: for a transformer class without a name in `NAMES` (a layer holding one
      works, but cannot write its config).
  """
  for name, cls in _CLASSES.items():
    if type(transformer) is cls:  # pylint: disable=unidiomatic-typecheck
      return {"name": name, "config": transformer.get_config()}
  raise ValueError(f"{type(transformer).__name__} has no name in {NAMES}, so a layer "
                   "holding it cannot be saved by get_config / .keras; use one of those "
                   "transformers.")


def spline_transformer(num_bins, bound, circular):
  """The rational-quadratic transformer on [-bound, bound], periodic when `circular`."""
  if circular:
    return spline.CircularRationalQuadraticTransformer(num_bins=num_bins, bound=bound)
  return spline.RationalQuadraticTransformer(num_bins=num_bins, bound=bound)


class AffineArguments:
  """Mixin: the transformer is an `AffineTransformer(scale, clamp)` given by those two.

  Put it before the generic layer in the bases; `get_config` writes `scale` and `clamp`
  instead of `transformer`.
  """

  def __init__(self, scale, clamp, **kwargs):
    super().__init__(transformer=transformers.AffineTransformer(scale, clamp), **kwargs)

  @property
  def scale(self):
    return self.transformer.scale

  @property
  def clamp(self):
    return self.transformer.clamp

  def get_config(self):
    config = super().get_config()
    del config["transformer"]
    return {**config, "scale": self.scale, "clamp": self.clamp}


class SplineArguments:
  """Mixin: the transformer is `spline_transformer(num_bins, bound, circular)`.

  Put it before the generic layer in the bases; `get_config` writes `num_bins`, `bound`
  and `circular` instead of `transformer`.
  """

  def __init__(self, num_bins, bound, circular, **kwargs):
    super().__init__(transformer=spline_transformer(num_bins, bound, bool(circular)),
                     **kwargs)

  @property
  def num_bins(self):
    return self.transformer.num_bins

  @property
  def bound(self):
    return self.transformer.bound

  @property
  def circular(self):
    return isinstance(self.transformer, spline.CircularRationalQuadraticTransformer)

  def get_config(self):
    config = super().get_config()
    del config["transformer"]
    return {**config, "num_bins": self.num_bins, "bound": self.bound,
            "circular": self.circular}
