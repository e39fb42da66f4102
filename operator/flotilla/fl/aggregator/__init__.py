"""The aggregator: the round engine behind an HTTP API."""
