"""Reference PyTorch models with random weights, built inside the tests."""

from __future__ import annotations

import numpy as np
import torch

PVT_V2_CONFIGS = {
    # Full-size b0.
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2],
               num_attention_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4]),
    # A small b2-linear: same structure, fewer channels and blocks.
    "b2_linear_small": dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 2, 2, 1],
                            num_attention_heads=[1, 2, 3, 4], mlp_ratios=[8, 8, 4, 4],
                            linear_attention=True),
    # A tiny SRA config for fast tests.
    "tiny": dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                 num_attention_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2]),
}


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random LayerNorm / BatchNorm affines and statistics, so a wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)

    def rand(tensor, scale, offset=0.0):
        return torch.randn(tensor.shape, generator=generator) * scale + offset

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)):
                if module.weight is not None:
                    module.weight.copy_(rand(module.weight, 0.2, 1.0))
                    module.bias.copy_(rand(module.bias, 0.2))
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(rand(module.running_mean, 0.2))
                module.running_var.copy_(rand(module.running_var, 0.2).abs() + 0.5)
    return model.eval()


def hf_pvt_v2(config: str | dict = "b0", num_labels: int | None = 10, seed: int = 0, **overrides):
    """A transformers PVT v2 (classifier if num_labels else bare model), random weights."""
    from transformers import PvtV2Config, PvtV2ForImageClassification, PvtV2Model

    kwargs = dict(PVT_V2_CONFIGS[config]) if isinstance(config, str) else dict(config)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    if num_labels is None:
        return randomize_norms(PvtV2Model(PvtV2Config(**kwargs)), seed)
    config = PvtV2Config(
        num_labels=num_labels,
        id2label={i: f"label_{i}" for i in range(num_labels)},
        label2id={f"label_{i}": i for i in range(num_labels)},
        **kwargs,
    )
    return randomize_norms(PvtV2ForImageClassification(config), seed)


def timm_pvt_v2(name: str = "pvt_v2_b0", num_classes: int = 10, seed: int = 0, **kwargs):
    from tests.helpers import torchvision_stub

    torchvision_stub.install()
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return randomize_norms(model, seed)


def images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A normalised NHWC float32 batch."""
    return np.random.default_rng(seed).standard_normal((batch, height, width, 3)).astype("float32")


def to_torch(x_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


SEGFORMER_CONFIGS = {
    # Full-size b0 (MiT-b0 encoder, 256-channel decoder).
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2],
               num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=256),
    # A tiny one for the fast tests.
    "tiny": dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                 num_attention_heads=[1, 2, 3, 4], decoder_hidden_size=16),
}


def hf_segformer(config: str = "b0", task: str | None = "segmentation", num_labels: int = 150,
                 seed: int = 0):
    """A transformers SegFormer, random weights (norms randomised): `task` "segmentation"
    (`SegformerForSemanticSegmentation`), "classification" or None (the bare encoder)."""
    from transformers import (
        SegformerConfig,
        SegformerForImageClassification,
        SegformerForSemanticSegmentation,
        SegformerModel,
    )

    torch.manual_seed(seed)
    labels = {i: f"label_{i}" for i in range(num_labels)}
    config = SegformerConfig(
        num_labels=num_labels, id2label=labels, label2id={v: k for k, v in labels.items()},
        **SEGFORMER_CONFIGS[config],
    )
    model_cls = {"segmentation": SegformerForSemanticSegmentation,
                 "classification": SegformerForImageClassification, None: SegformerModel}[task]
    return randomize_norms(model_cls(config), seed)


GLPN_CONFIGS = {
    # Full-size GLPN on MiT-b0 (transformers' default GLPNConfig: 64-channel decoder).
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2],
               num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=64),
    # A tiny one for the fast tests (stage widths around the decoder's: some levels need
    # the 1x1 projection and some do not, as in the real checkpoints).
    "tiny": dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                 num_attention_heads=[1, 2, 3, 4], decoder_hidden_size=16),
}


def hf_glpn(config: str = "b0", max_depth: float = 10, seed: int = 0):
    """A transformers `GLPNForDepthEstimation`, random weights (norms randomised)."""
    from transformers import GLPNConfig, GLPNForDepthEstimation

    torch.manual_seed(seed)
    model = GLPNForDepthEstimation(GLPNConfig(max_depth=max_depth, **GLPN_CONFIGS[config]))
    return randomize_norms(model, seed)
