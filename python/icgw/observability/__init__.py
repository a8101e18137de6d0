"""Operability of the gateway, one module per concern.

- `logging`: stdout and JSON-file logging through a background writer thread, filter specs.
- `metrics`: the Prometheus metrics (`GatewayMetrics`), histograms, no per-client labels.
- `health`: the HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
- `tracing`: OpenTelemetry spans per connection and per sampled poll.

Nothing is re-exported here, so importing one concern does not import the others' libraries.
"""
