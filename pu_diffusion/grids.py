"""Images as the scripts write them: pipeline outputs to PIL, and sample grids saved as PNG."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_pil_images(images) -> list[Image.Image]:
    """Pipeline output (list of PIL, float array N×H×W×C in [0, 1], or uint8 array) as a list of PIL images."""
    if isinstance(images, list) and images and isinstance(images[0], Image.Image):
        return images
    array = np.asarray(images)
    if array.dtype != np.uint8:  # uint8 is already pixels: scaling it by 255 would wrap around
        array = (array * 255).round().clip(0, 255).astype(np.uint8)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    return [Image.fromarray(image) for image in array]


def save_image_grid(images, path: str, columns: int | None = None, scale: int = 1) -> str:
    """Tile images into one PNG (``columns`` per row, default ⌈√N⌉), optionally upscaled by ``scale``; atomic."""
    from diffusers.utils import make_image_grid

    pil_images = to_pil_images(images)
    columns = columns or math.ceil(math.sqrt(len(pil_images)))
    rows = math.ceil(len(pil_images) / columns)
    pil_images = pil_images + [Image.new(pil_images[0].mode, pil_images[0].size)] * (rows * columns - len(pil_images))
    grid = make_image_grid(pil_images, rows=rows, cols=columns)
    if scale != 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path + ".tmp", format="PNG")  # then renamed: a kill never leaves a truncated PNG
    os.replace(path + ".tmp", path)
    return path
