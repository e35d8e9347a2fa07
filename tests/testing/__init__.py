"""Shared test helpers for tfp_flows (our own; no TFP or Keras private testing modules)."""
