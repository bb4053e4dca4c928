"""`python -m genscale`: the CLI (what torchrun and `train --nproc` start on each rank)."""

from genscale.cli import app

app(prog_name="genscale")
