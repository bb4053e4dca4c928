"""Studies: grids of ordinary runs over axes, scaling-law fits, a verdict and a report.

Called, `genscale.study(spec, ...)` is the Python API's study (genscale/api.py)."""

from genscale import callable_package

callable_package(__name__)
