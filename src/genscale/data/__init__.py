"""Datasets: built-in sets, user sources, splits and nested subsets."""

from genscale.data.datasets import ImageData, load_image_data

__all__ = ["ImageData", "load_image_data"]
