"""Tests of tfp_flows.bijectors (a package so module names cannot clash with tests/layers)."""
