"""One training loop for every family; the machinery around it is written once.

Called, `genscale.train(config, ...)` is the Python API's train (genscale/api.py)."""

from genscale import callable_package

callable_package(__name__)
