"""Reference PVT v1 models (transformers, random weights) and the original repository's view
of them.

transformers' `PvtPatchEmbeddings.interpolate_pos_encoding` reshapes the *stored* position
embeddings to the *input's* grid, so any size other than the config's `image_size` raises.
The original repository (whai362/PVT, `_get_pos_embed`) instead resizes the stored grid to
the input's grid with `F.interpolate(..., mode="bilinear")` (align_corners=False).
`original_position_interpolation()` swaps that behaviour into transformers' modules, so the
reference for non-224 sizes is transformers' own forward pass with the original
interpolation; every other module and weight is transformers'.

`original_state_dict` / `use_original_epsilons` give the original repository's layout of the
same weights (fused `kv`, `patch_embed1`, `pos_embed1`, `block1.0.attn.q`...) and its
LayerNorm epsilons (1e-5 in the patch-embedding and spatial-reduction norms).
"""

from __future__ import annotations

import contextlib
import re

import torch
import torch.nn.functional as F

from tests.helpers.reference import randomize_norms

PVT_CONFIGS = {
    # Full-size pvt_tiny (13,229,288 parameters with 1000 classes).
    "tiny": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2],
                 num_attention_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4]),
    # Same structure, few channels; the standard heads (1, 2, 5, 8), which is what a
    # checkpoint without config.json is read as.
    "small": dict(hidden_sizes=[8, 16, 40, 64], depths=[1, 2, 1, 2],
                  num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 2, 2]),
}


def randomize_embeddings(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Position embeddings and class token of unit scale (transformers initialises them
    with std 0.02), so that a wrong resize or a missing class token shows in the outputs."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("position_embeddings", "cls_token")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def hf_pvt(config: str | dict = "small", num_labels: int | None = 10, seed: int = 0,
           **overrides):
    """A transformers PVT v1 (classifier if num_labels else bare model), random weights
    with random LayerNorm affines and unit-scale position embeddings."""
    from transformers import PvtConfig, PvtForImageClassification, PvtModel

    kwargs = dict(PVT_CONFIGS[config]) if isinstance(config, str) else dict(config)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    if num_labels is None:
        model = PvtModel(PvtConfig(**kwargs))
    else:
        model = PvtForImageClassification(PvtConfig(
            num_labels=num_labels,
            id2label={i: f"label_{i}" for i in range(num_labels)},
            label2id={f"label_{i}": i for i in range(num_labels)},
            **kwargs,
        ))
    return randomize_norms(randomize_embeddings(model, seed), seed)


def _original_interpolate(self, embeddings, height: int, width: int):
    """whai362/PVT's `_get_pos_embed`: the stored grid resized bilinearly to (height, width)."""
    grid_height = self.image_size[0] // self.patch_size[0]
    grid_width = self.image_size[1] // self.patch_size[1]
    grid = embeddings.reshape(1, grid_height, grid_width, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
    return grid.reshape(1, -1, height * width).permute(0, 2, 1)


@contextlib.contextmanager
def original_position_interpolation():
    """Within the block, transformers' PVT resizes position embeddings as the original does."""
    from transformers.models.pvt.modeling_pvt import PvtPatchEmbeddings

    saved = PvtPatchEmbeddings.interpolate_pos_encoding
    PvtPatchEmbeddings.interpolate_pos_encoding = _original_interpolate
    try:
        yield
    finally:
        PvtPatchEmbeddings.interpolate_pos_encoding = saved


def use_original_epsilons(model: torch.nn.Module) -> torch.nn.Module:
    """Sets the original repository's 1e-5 on the patch-embedding and spatial-reduction
    LayerNorms (transformers uses its `layer_norm_eps`, 1e-6, everywhere)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) and (
            ".patch_embeddings." in f".{name}" or name.endswith("attention.self.layer_norm")
        ):
            module.eps = 1e-5
    return model


_RENAMES = [
    (r"^(pvt\.)?encoder\.patch_embeddings\.(\d+)\.projection\.", "patch_embed{1}.proj."),
    (r"^(pvt\.)?encoder\.patch_embeddings\.(\d+)\.layer_norm\.", "patch_embed{1}.norm."),
    (r"^(pvt\.)?encoder\.patch_embeddings\.(\d+)\.position_embeddings$", "pos_embed{1}"),
    (r"^(pvt\.)?encoder\.patch_embeddings\.(\d+)\.cls_token$", "cls_token"),
    (r"^(pvt\.)?encoder\.block\.(\d+)\.", "block{1}."),
    (r"^(pvt\.)?encoder\.layer_norm\.", "norm."),
    (r"^classifier\.", "head."),
]
_BLOCK_RENAMES = {
    ".layer_norm_1.": ".norm1.",
    ".layer_norm_2.": ".norm2.",
    ".attention.self.query.": ".attn.q.",
    ".attention.self.sequence_reduction.": ".attn.sr.",
    ".attention.self.layer_norm.": ".attn.norm.",
    ".attention.output.dense.": ".attn.proj.",
    ".mlp.dense1.": ".mlp.fc1.",
    ".mlp.dense2.": ".mlp.fc2.",
}


def original_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the original repository's names, `key`/`value` fused into
    `attn.kv` ([K; V] along the output axis), as transformers' conversion script splits them."""
    out = {}
    for key, value in model.state_dict().items():
        for pattern, template in _RENAMES:
            match = re.match(pattern, key)
            if match:
                stage = int(match.group(2)) + 1 if match.lastindex and match.lastindex >= 2 else 0
                key = template.format(None, stage) + key[match.end():]
                break
        for old, new in _BLOCK_RENAMES.items():
            key = key.replace(old, new)
        out[key] = value.contiguous()
    for key in [k for k in out if ".attention.self.key." in k]:
        value_key = key.replace(".attention.self.key.", ".attention.self.value.")
        fused_key = key.replace(".attention.self.key.", ".attn.kv.")
        out[fused_key] = torch.cat([out.pop(key), out.pop(value_key)], dim=0).contiguous()
    return out
