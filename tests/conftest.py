"""Fixtures shared by the test suite (helpers that are plain functions live in tests/testing/)."""

import gc

import keras
import pytest


@pytest.fixture
def keras_seed():
  """Seeds Python, NumPy, TF and Keras (`keras.utils.set_random_seed(0)`) for one test."""
  keras.utils.set_random_seed(0)


@pytest.fixture
def float64_policy():
  """Runs one test under floatx and the global dtype policy "float64", then restores both.

  Keras fixes its global dtype policy from floatx the first time a layer asks for it, so
  floatx alone does not reach layers built after any other test: set both.
  """
  floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx("float64")
  keras.config.set_dtype_policy("float64")
  try:
    yield
  finally:
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def global_policy(request):
  """Runs one test under each global mixed precision policy, then restores "float32"."""
  keras.mixed_precision.set_global_policy(request.param)
  try:
    yield request.param
  finally:
    keras.mixed_precision.set_global_policy("float32")


_frozen_at = {"module": None}


def pytest_runtest_setup(item):
  """At each new test module: collect garbage once, then freeze what survives.

  A test process keeps TensorFlow's import-time objects and much of what earlier modules
  built (traced functions, Keras global state), millions of objects by the end of the
  suite. Python's full collections walk all of them every time, about 1 s each; frozen
  objects are not walked again (`gc.freeze`). Module fixtures of the previous module are
  torn down by now, so what is frozen is what the process keeps anyway.
  """
  if _frozen_at["module"] is not item.module:
    _frozen_at["module"] = item.module
    gc.collect()
    gc.freeze()
