"""Studies: grids of ordinary runs over axes, scaling-law fits, a verdict and a report."""
