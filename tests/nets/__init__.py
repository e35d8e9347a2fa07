"""Tests of tfp_flows.nets (a package so module names cannot clash with other test dirs)."""
