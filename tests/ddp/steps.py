"""A torchrun worker for tests/test_ddp.py: `steps` training steps of each config's recipe on this rank's rows, then
rank 0 saves the mean logged values and the model/optimiser tensors to OUT/<i>.pt."""

import sys
from pathlib import Path

import torch

from genscale.config import load_config
from genscale.families import family_of
from genscale.pipeline import load_data
from genscale.train.distributed import join, leave, rank_rows, world_from_env
from genscale.train.machinery import autocast_for


def run(config: str, steps: int, out: Path) -> None:
    cfg = load_config(config)
    world = world_from_env()
    device = join(world, torch.device("cpu"))
    recipe = family_of(cfg).recipe(cfg, load_data(cfg), device, resume=False, world=world)
    values = []
    for step in range(steps):
        with rank_rows(world):
            values.append(world.mean(recipe.step(step, autocast_for(device, "fp32"))))
    tensors, _ = recipe.tensors()
    if world.main:
        torch.save({"values": torch.stack(values), "tensors": {k: v for k, v in tensors.items()
                                                               if not k.startswith("rng.")}}, out)


if __name__ == "__main__":
    out, steps, *configs = sys.argv[1:]
    for i, config in enumerate(configs):
        run(config, int(steps), Path(out) / f"{i}.pt")
    leave(world_from_env())
