"""Tests of tfp_flows.estimators (a package so module names cannot clash with other test dirs)."""
