"""Model families, one module each: gan.py (`build_gan`: generator and discriminator), gpt.py (`build_gpt`).

PRESETS maps every network (config `model.arch`) to its size presets, so a config or a study axis can be checked
before anything is built.
"""

from genscale.errors import GenscaleError
from genscale.models import gan, gpt

PRESETS: dict[str, dict[str, dict[str, int]]] = {**gan.PRESETS, "gpt": gpt.PRESETS}


def check_size(arch: str, size: str) -> None:
    """model.size must be a preset of the arch."""
    if size not in PRESETS.get(arch, {}):
        raise GenscaleError(f"model.size: '{size}' is not a preset of {arch} "
                            f"(choose from {', '.join(PRESETS.get(arch, {}))})")
