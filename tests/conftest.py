import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY_UNET = {
    "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
}


@pytest.fixture(autouse=True)
def reset_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def tiny_unet_config(tmp_path):
    def make(channels=1):
        folder = tmp_path / f"tiny_unet_{channels}"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps({**TINY_UNET, "in_channels": channels,
                                                        "out_channels": channels}))
        return str(folder)
    return make


def write_imagefolder(root, n_unlabeled=12, n_sensitive=6, size=12, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    for name, count in (("unlabeled", n_unlabeled), ("sensitive", n_sensitive)):
        if count:
            os.makedirs(os.path.join(root, name), exist_ok=True)
        for index in range(count):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(
                os.path.join(root, name, f"{index:03d}.png"))
    return str(root)


@pytest.fixture
def imagefolder(tmp_path):
    return write_imagefolder(tmp_path / "data")


def tiny_args(output_dir, unet_config, *extra):
    """Flags of a fast built-in MNIST run on a tiny UNet at 8×8."""
    return ["--output_dir", str(output_dir), "--model_config_name_or_path", unet_config, "--resolution", "8",
            "--train_batch_size", "8", "--sensitive_batch_size", "4", "--max_train_steps", "6",
            "--checkpointing_steps", "3", "--validation_steps", "0", "--num_inference_steps", "4",
            "--num_final_images", "4", "--seed", "0", "--report_to", "none", "--lr_warmup_steps", "2",
            *extra]
