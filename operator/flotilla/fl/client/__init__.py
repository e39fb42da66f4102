"""The federated client that runs at each site."""
