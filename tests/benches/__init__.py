"""Tests of the benchmark harness (benches/relay) and the load tests (loadtests)."""
