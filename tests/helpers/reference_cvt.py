"""Reference CvT models (transformers) with random weights, built inside the tests."""

from __future__ import annotations

import torch

from tests.helpers.reference import randomize_norms

CVT_CONFIGS = {
    # Full-size CvT-13 (transformers' CvtConfig defaults).
    "13": {},
    # Same structure as CvT-13, fewer channels and layers.
    # (transformers needs depth[i] > i: it indexes a per-layer drop-path list by stage.)
    "small": dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3]),
    # Every other hyperparameter away from its default, and no cls token anywhere (the
    # classifier then averages the normalised last-stage tokens).
    "small_variants": dict(
        embed_dim=[16, 32, 48], num_heads=[2, 4, 4], depth=[1, 2, 3],
        patch_sizes=[4, 3, 2], patch_stride=[4, 2, 2], patch_padding=[0, 1, 0],
        mlp_ratio=[2.0, 3.0, 4.0], qkv_bias=[False, True, False],
        kernel_qkv=[3, 5, 3], padding_q=[1, 2, 1], padding_kv=[0, 2, 1], stride_kv=[1, 3, 2],
        cls_token=[False, False, False],
    ),
    # Projection methods that transformers cannot run (see `original_projections`).
    "small_avg_linear": dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3],
                             qkv_projection_method=["avg", "linear", "avg"],
                             padding_kv=[1, 1, 0], stride_kv=[2, 2, 3]),
}


def original_projections(model: torch.nn.Module) -> torch.nn.Module:
    """Installs the original CvT's `avg` and `linear` q/k/v projections.

    transformers' `CvtSelfAttentionProjection` only builds the `dw_bn` convolution, so any
    other method fails there. The original repository (microsoft/CvT, `_build_projection`)
    uses `nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)` for `avg` keys/values, no
    projection for `avg` queries, and none at all for `linear`.
    """
    from transformers.models.cvt.modeling_cvt import CvtSelfAttention, CvtStage

    for stage in model.modules():
        if not isinstance(stage, CvtStage):
            continue
        config, index = stage.config, stage.stage
        method = config.qkv_projection_method[index]
        if method == "dw_bn":
            continue
        for attention in stage.modules():
            if not isinstance(attention, CvtSelfAttention):
                continue
            attention.convolution_projection_query.convolution_projection = torch.nn.Identity()
            for projection in (attention.convolution_projection_key,
                               attention.convolution_projection_value):
                projection.convolution_projection = (
                    torch.nn.AvgPool2d(config.kernel_qkv[index], config.stride_kv[index],
                                       config.padding_kv[index], ceil_mode=True)
                    if method == "avg" else torch.nn.Identity()
                )
    return model


def hf_cvt(config: str | dict = "small", num_labels: int | None = 10, seed: int = 0,
           **overrides):
    """A transformers CvT (classifier if num_labels else bare model) with random weights,
    random LayerNorm/BatchNorm affines and BatchNorm statistics."""
    from transformers import CvtConfig, CvtForImageClassification, CvtModel

    kwargs = dict(CVT_CONFIGS[config]) if isinstance(config, str) else dict(config)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    if num_labels is None:
        model = CvtModel(CvtConfig(**kwargs), add_pooling_layer=False)
    else:
        model = CvtForImageClassification(CvtConfig(
            num_labels=num_labels,
            id2label={i: f"label_{i}" for i in range(num_labels)},
            label2id={f"label_{i}": i for i in range(num_labels)},
            **kwargs,
        ))
    return randomize_norms(original_projections(model), seed)
