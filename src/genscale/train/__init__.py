"""One training loop for every family; the machinery around it is written once."""
