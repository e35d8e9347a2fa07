"""Presets take the library's spelling of each argument beside its older alias.

Both spellings build the same model (equal `get_config`, layer names included: the Keras
name counters are reset before each build), the defaults are those the older spelling
had, and passing both spellings of one argument is a `ValueError` naming the one to keep.
"""

import keras
import pytest

import tfp_flows as tff
from tfp_flows.models import _aliases


def _config(make):
  # Only the name counters need resetting; a garbage collection per build took 1-2 s
  # each in a test process that had run other modules first.
  keras.backend.clear_session(free_memory=False)
  return make().get_config()


# (preset, older spelling, library spelling, common arguments)
PAIRS = [
    ("nsf_coupling", tff.models.NeuralSplineFlow,
     {"event_dims": 3, "num_layers": 2, "context_dims": 2},
     {"event_shape": [3], "num_blocks": 2, "context_shape": [2]},
     {"hidden_units": (4,), "num_bins": 3}),
    ("nsf_autoregressive", tff.models.NeuralSplineFlow,
     {"event_dims": 1, "num_layers": 1}, {"event_shape": (1,), "num_blocks": 1},
     {"hidden_units": (4,), "autoregressive": True}),
    ("residual", tff.models.ResidualFlow,
     {"logdet": "series", "n_exact_terms": 3}, {"log_det": "series", "num_exact_terms": 3},
     {"event_shape": [2], "num_blocks": 1, "hidden_units": (4,)}),
    ("ffjord", tff.models.FFJORDFlow,
     {"training": "flow_matching"}, {"objective": "flow_matching"},
     {"event_shape": [2], "hidden_units": (4,), "actnorm": False, "solver": "rk4"}),
    ("glow", tff.models.Glow, {"image_shape": [4, 4, 1]}, {"event_shape": (4, 4, 1)},
     {"num_scales": 1, "steps_per_scale": 1, "hidden_channels": 4}),
    ("tarflow", tff.models.TarFlow, {"image_shape": [4, 4, 1]}, {"event_shape": (4, 4, 1)},
     {"channels": 8, "heads": 2, "num_blocks": 1, "layers_per_block": 1}),
]


@pytest.mark.parametrize("preset,old,new,common", [p[1:] for p in PAIRS],
                         ids=[p[0] for p in PAIRS])
def test_both_spellings_build_the_same_model(preset, old, new, common):
  new_config = _config(lambda: preset(**new, **common))
  assert _config(lambda: preset(**old, **common)) == new_config
  # One argument at a time in its older spelling: each value passed differs from the
  # default (event_dims aside, which is required), so an alias that were dropped would
  # change the config.
  for (name, value), (alias, alias_value) in zip(new.items(), old.items()):
    mixed = {**{k: v for k, v in new.items() if k != name}, alias: alias_value}
    assert _config(lambda: preset(**mixed, **common)) == new_config, alias
    with pytest.raises(ValueError, match=rf"{name}= and {alias}= are two spellings of one "
                                         rf"argument .* Pass only {name}=\."):
      preset(**new, **{alias: alias_value}, **common)


def test_defaults_are_those_of_the_older_spelling():
  assert _config(lambda: tff.models.ResidualFlow([2], num_blocks=1, hidden_units=(4,))) == (
      _config(lambda: tff.models.ResidualFlow([2], num_blocks=1, hidden_units=(4,),
                                              logdet="russian_roulette", n_exact_terms=2)))
  assert _config(lambda: tff.models.FFJORDFlow([2], hidden_units=(4,), solver="rk4")) == (
      _config(lambda: tff.models.FFJORDFlow([2], hidden_units=(4,), solver="rk4",
                                            training="maximum_likelihood")))
  default = tff.models.NeuralSplineFlow(event_shape=[2], hidden_units=(4,))
  assert sum(isinstance(l, tff.layers.SplineCoupling) for l in default.flow_layers) == 5


@pytest.mark.parametrize("preset,common", [
    (tff.models.Glow, {"num_scales": 1, "steps_per_scale": 1, "hidden_channels": 4}),
    (tff.models.TarFlow, {"channels": 8, "heads": 2, "num_blocks": 1,
                          "layers_per_block": 1}),
], ids=["glow", "tarflow"])
def test_image_presets_take_the_shape_first_in_either_spelling(preset, common):
  positional = _config(lambda: preset([4, 4, 1], **common))
  assert positional == _config(lambda: preset(event_shape=[4, 4, 1], **common))
  assert positional["event_shape"] == [4, 4, 1]
  name = preset.__name__
  with pytest.raises(ValueError, match=rf"{name} needs the image shape: pass "
                                       r"event_shape=\[H, W, C\]"):
    preset(**common)
  with pytest.raises(ValueError, match=rf"{name} models images: event_shape must be "
                                       r"\[H, W, C\] with positive sizes; got \[4, 4\]"):
    preset([4, 4], **common)


def test_spelling_errors():
  with pytest.raises(ValueError, match=r"event_shape must be \[D\]; got \[2, 2\]"):
    tff.models.NeuralSplineFlow(event_shape=[2, 2])
  with pytest.raises(ValueError, match=r"needs the data shape: pass event_shape=\[D\]"):
    tff.models.NeuralSplineFlow(num_blocks=2)
  with pytest.raises(ValueError, match="objective must be one of"):
    tff.models.FFJORDFlow([2], objective="flow_match")
  with pytest.raises(ValueError, match="objective='flow_matching' learns one vector field"):
    tff.models.FFJORDFlow([2], num_blocks=2, objective=tff.objectives.FlowMatching())
  # Equal values in both spellings are still ambiguous.
  with pytest.raises(ValueError, match="log_det= and logdet= are two spellings"):
    _aliases.resolve("log_det", "exact", "logdet", "exact", "russian_roulette")
  assert _aliases.resolve("log_det", None, "logdet", None, "russian_roulette") == (
      "russian_roulette")
  assert _aliases.resolve("log_det", None, "logdet", "exact", "russian_roulette") == "exact"
