"""Models and the local training loop that a client runs each round (plain torch)."""
