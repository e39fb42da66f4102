"""The federated-learning runtime: wire format, strategies, aggregator, client."""
