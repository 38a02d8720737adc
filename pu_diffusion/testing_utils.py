"""Test-support builders: tiny models and small image folders, built locally (no Hub), for tests and smoke benchmarks.

TINY_UNET / write_unet_config   a 2-block UNet2DModel config (8×8, diffusers' fast-test size)
build_tiny_sd                   a Stable Diffusion 1.x pipeline folder with a CLIP tokenizer written from a byte vocab
build_tiny_sdxl / _sd3 / _flux  the same for SDXL, Stable Diffusion 3 and FLUX (T5 tokenizers: write_t5_tokenizer)
write_imagefolder               unlabeled/ + sensitive/ sub-folders of random images
write_captioned_folder          an imagefolder with metadata.jsonl (file_name, text, label)
write_class_folders             a labelled imagefolder: one sub-folder of random images per class
write_png                       one PNG (8- or 16-bit) from an array
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

TINY_UNET = {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
}


def write_unet_config(folder, channels: int = 1, sample_size: int = 8) -> str:
    """Write TINY_UNET (with ``channels`` in and out) as ``folder/config.json``; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    config = {**TINY_UNET, "in_channels": channels, "out_channels": channels, "sample_size": sample_size}
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config, handle)
    return str(folder)


def write_imagefolder(root, n_unlabeled=12, n_sensitive=6, size=12, mode="RGB", seed=0) -> str:
    """An imagefolder with ``unlabeled/`` and ``sensitive/`` sub-folders of random PNGs."""
    rng = np.random.default_rng(seed)
    for name, count in (("unlabeled", n_unlabeled), ("sensitive", n_sensitive)):
        if count:
            os.makedirs(os.path.join(root, name), exist_ok=True)
        for index in range(count):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(
                os.path.join(root, name, f"{index:03d}.png")
            )
    return str(root)


def bytes_to_unicode():
    """GPT-2/CLIP's byte → printable-character table."""
    codes = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = codes[:]
    extra = 0
    for byte in range(256):
        if byte not in codes:
            codes.append(byte)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_clip_tokenizer(folder, model_max_length: int = 16):
    """A CLIP BPE tokenizer whose vocabulary is every byte symbol (no merges): text becomes characters."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    symbols = bytes_to_unicode()
    vocab = {token: index for index, token in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as handle:
        json.dump(vocab, handle)
    with open(os.path.join(folder, "merges.txt"), "w") as handle:
        handle.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=model_max_length
    )
    return tokenizer


def tiny_vae(sample_size: int, **extra):
    """The tiny 4-channel AutoencoderKL (2 blocks: 2× downsampling) every tiny pipeline here uses; ``extra``: a
    family's constants (shift and scaling factors, no quant convs)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=sample_size, **extra,
    )  # fmt: skip


def build_tiny_sd(folder, prediction_type="epsilon", sample_size=8):
    """Save a tiny StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL, CLIP) to ``folder``."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(os.path.join(folder, "_tok"))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            vocab_size=len(tokenizer),
            max_position_embeddings=16,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=16,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = tiny_vae(sample_size * 2)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, prediction_type=prediction_type, steps_offset=1, clip_sample=False
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sdxl(folder, sample_size=8):
    """Save a tiny StableDiffusionXLPipeline (two CLIP encoders, the second with projection; a text_time UNet) to
    ``folder``, with the EulerDiscreteScheduler SDXL ships with."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizers = [write_clip_tokenizer(os.path.join(folder, name)) for name in ("_tok", "_tok2")]

    def text_config(tokenizer):
        return tiny_clip_config(tokenizer, width=16)

    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,  # the two encoders' 16 + 16
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,  # six time ids + the pooled projection
    )
    vae = tiny_vae(sample_size * 2)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config(tokenizers[0])),
        text_encoder_2=CLIPTextModelWithProjection(text_config(tokenizers[1])),
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_t5_tokenizer(folder, words=("a", "photo", "of", "man", "brad", "the", "digit", "seven", "handwritten")):
    """A T5TokenizerFast whose Unigram vocabulary is <pad>, </s>, <unk>, "▁" and the given words (no download;
    anything else is <unk>); </s> ends every text, as T5's does."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [(f"▁{word}", -1.0) for word in words]
    T5TokenizerFast(vocab=vocab, extra_ids=0).save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def tiny_clip_config(tokenizer, width: int):
    """A 2-layer CLIP text config of hidden (and projection) size ``width`` for ``tokenizer`` (SDXL, SD3, FLUX)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=width, intermediate_size=2 * width, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=16, projection_dim=width,
    )  # fmt: skip


def tiny_t5(tokenizer):
    """A 1-layer T5 encoder of width 16 for ``tokenizer`` (SD3, FLUX)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))


def build_tiny_sd3(folder, sample_size=8):
    """Save a tiny StableDiffusion3Pipeline (SD3Transformer2DModel, two CLIP encoders with projection, a T5 encoder,
    FlowMatchEulerDiscreteScheduler) to ``folder``; CLIP states (8 + 8) pad to T5's width 16, pooled 8 + 8 = 16."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    clip_tokenizers = [write_clip_tokenizer(os.path.join(folder, name)) for name in ("_tok", "_tok2")]
    t5_tokenizer = write_t5_tokenizer(os.path.join(folder, "_tok3"))

    def clip(tokenizer):
        return CLIPTextModelWithProjection(tiny_clip_config(tokenizer, width=8))

    t5 = tiny_t5(t5_tokenizer)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=sample_size,
    )  # fmt: skip
    vae = tiny_vae(sample_size * 2, shift_factor=0.0609, scaling_factor=1.5305)  # SD3's VAE constants
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip(clip_tokenizers[0]),
        tokenizer=clip_tokenizers[0],
        text_encoder_2=clip(clip_tokenizers[1]),
        tokenizer_2=clip_tokenizers[1],
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_flux(folder):
    """Save a tiny FluxPipeline (FluxTransformer2DModel with FLUX-dev's guidance embedding, a CLIP encoder whose
    pooled 8 is the pooled projection, a T5 encoder of width 16, a 4-channel VAE with FLUX's shift and scale, and
    FLUX-dev's dynamically shifted FlowMatchEulerDiscreteScheduler) to ``folder``."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    clip_tokenizer = write_clip_tokenizer(os.path.join(folder, "_tok"))
    t5_tokenizer = write_t5_tokenizer(os.path.join(folder, "_tok2"))
    clip = CLIPTextModel(tiny_clip_config(clip_tokenizer, width=8))
    t5 = tiny_t5(t5_tokenizer)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    vae = tiny_vae(16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    pipeline = FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer,
        text_encoder_2=t5, tokenizer_2=t5_tokenizer,
    )  # fmt: skip
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_captioned_folder(root, n_unlabeled=8, n_sensitive=4, size=20, seed=0, with_folders=False):
    """imagefolder with metadata.jsonl (file_name, text, label) — or unlabeled/ & sensitive/ sub-folders."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    lines = []
    for label, count, caption in (
        ("unlabeled", n_unlabeled, "a photo of a man"),
        ("sensitive", n_sensitive, "a photo of brad"),
    ):
        for index in range(count):
            name = f"{label}/{index:03d}.png" if with_folders else f"{label}_{index:03d}.png"
            os.makedirs(os.path.dirname(os.path.join(root, name)) or root, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(os.path.join(root, name))
            row = {"file_name": name, "text": caption}
            if not with_folders:
                row["label"] = label
            lines.append(json.dumps(row))
    with open(os.path.join(root, "metadata.jsonl"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(root)


def write_png(path, array) -> str:
    """Save ``array`` as a PNG (uint8 → 8-bit, uint16 → 16-bit ``I;16`` grayscale), making parent folders."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return str(path)


def write_class_folders(root, counts: dict, size=8, seed=0) -> str:
    """A labelled imagefolder: ``root/<class>/NNN.png`` with ``counts[class]`` random grayscale PNGs per class.

    `datasets`' imagefolder reads it with a ClassLabel ``label`` column (ids in sorted folder-name order).
    """
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        for index in range(count):
            write_png(
                os.path.join(root, str(name), f"{index:03d}.png"), rng.integers(0, 255, (size, size), dtype=np.uint8)
            )
    return str(root)
