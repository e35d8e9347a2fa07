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


def pytest_collection_finish(session):
  """Freezes what the test process holds once its tests are collected (`gc.freeze`).

  TensorFlow, TFP, Keras and the test modules are imported by then: about half a million
  objects that live as long as the process. Python's full collections would walk them
  every time, about 0.2 s each; frozen, they are no longer walked.
  """
  del session
  gc.collect()
  gc.freeze()
