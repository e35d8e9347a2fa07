"""tfp_flows.numerics.aliases, and the spec that takes `num_exact_terms` beside its alias.

`LogDetEstimator` writes `num_exact_terms` (the library's spelling) in its config and
reads configs written with `n_exact_terms`, as the `log_det_estimator` entry of a
`ResidualBlock` saved before the rename has it.
"""

import sys

import pytest

from tfp_flows.numerics import aliases
from tfp_flows.numerics import estimators


def test_resolve_and_spelling():
  assert aliases.resolve("lipschitz", None, "coefficient", None, 0.97) == 0.97
  assert aliases.resolve("lipschitz", 0.5, "coefficient", None, 0.97) == 0.5
  assert aliases.resolve("lipschitz", None, "coefficient", 0.6, 0.97) == 0.6
  # 0 is a value, not "nothing passed".
  assert aliases.resolve("num_exact_terms", None, "n_exact_terms", 0, 2) == 0
  with pytest.raises(ValueError, match=r"lipschitz= and coefficient= are two spellings of "
                                       r"one argument \(coefficient is the older one\); got "
                                       r"lipschitz=0.5 and coefficient=0.5\. Pass only "
                                       r"lipschitz=\."):
    aliases.resolve("lipschitz", 0.5, "coefficient", 0.5, 0.97)
  assert aliases.spelling("lipschitz", "coefficient", None) == "lipschitz"
  assert aliases.spelling("lipschitz", "coefficient", 0.5) == "coefficient"


def test_log_det_estimator_spellings():
  new = estimators.LogDetEstimator(training="series", num_exact_terms=3)
  old = estimators.LogDetEstimator(training="series", n_exact_terms=3)
  config = new.get_config()
  assert config == old.get_config()
  assert config["num_exact_terms"] == 3 and "n_exact_terms" not in config
  assert new.num_exact_terms == old.n_exact_terms == 3
  # The series runs the 3 terms in training.
  assert new.choose(True, 5).num_terms == 3
  assert estimators.LogDetEstimator().num_exact_terms == 2
  legacy = {**config, "n_exact_terms": 4}
  del legacy["num_exact_terms"]
  assert estimators.LogDetEstimator.from_spec(legacy).num_exact_terms == 4
  with pytest.raises(ValueError, match="num_exact_terms= and n_exact_terms= are two"):
    estimators.LogDetEstimator(num_exact_terms=3, n_exact_terms=3)
  with pytest.raises(ValueError, match=r"n_exact_terms must be an int >= 1 with "
                                       r"log_det='series'; got 0"):
    estimators.LogDetEstimator(training="series", n_exact_terms=0)
  with pytest.raises(ValueError, match=r"num_exact_terms must be an int >= 0 with "
                                       r"log_det='russian_roulette'; got 1.5"):
    estimators.LogDetEstimator(num_exact_terms=1.5)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
