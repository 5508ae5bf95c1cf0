"""PVT v2 backbone (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer")."""

from collections.abc import Sequence

import keras
from keras_hub.models import FeaturePyramidBackbone

from keras_pvt.layers import (
    DropPath,
    MixFFN,
    OverlapPatchEmbedding,
    SpatialReductionAttention,
    add_residual,
    call_sublayer,
)
from keras_pvt.models.base import Downsampling, PresetMixin


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2Block(keras.layers.Layer):
    """One PVT v2 encoder block on an NHWC map: pre-norm SRA and Mix-FFN, each residual.

    Sublayer names follow transformers' `PvtV2BlockLayer`, so the weight map is a table.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        linear_attention: bool = False,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        epsilon: float = 1e-6,
        reduction_epsilon: float = 1e-6,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.sr_ratio = sr_ratio
        self.linear_attention = linear_attention
        self.qkv_bias = qkv_bias
        self.drop_path = drop_path
        self.epsilon = epsilon
        self.reduction_epsilon = reduction_epsilon
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        dtype = self.dtype_policy
        self.layer_norm_1 = keras.layers.LayerNormalization(
            epsilon=epsilon, dtype=dtype, name="layer_norm_1"
        )
        self.attention = SpatialReductionAttention(
            hidden_size,
            num_heads,
            sr_ratio=sr_ratio,
            linear=linear_attention,
            qkv_bias=qkv_bias,
            epsilon=reduction_epsilon,
            attention_dropout=attention_dropout,
            proj_dropout=hidden_dropout,
            dtype=dtype,
            name="attention",
        )
        self.drop_path_layer = DropPath(drop_path, dtype=dtype)
        self.layer_norm_2 = keras.layers.LayerNormalization(
            epsilon=epsilon, dtype=dtype, name="layer_norm_2"
        )
        self.mlp = MixFFN(
            hidden_size,
            int(hidden_size * mlp_ratio),
            linear=linear_attention,
            dropout=hidden_dropout,
            dtype=dtype,
            name="mlp",
        )

    def build(self, input_shape):
        for layer in (self.layer_norm_1, self.attention, self.layer_norm_2, self.mlp):
            layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        normed = call_sublayer(self.layer_norm_1, inputs)
        x = call_sublayer(self.attention, normed, training=training)
        x = add_residual(inputs, call_sublayer(self.drop_path_layer, x, training=training))
        normed = call_sublayer(self.layer_norm_2, x)
        y = call_sublayer(self.mlp, normed, training=training)
        return add_residual(x, call_sublayer(self.drop_path_layer, y, training=training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "sr_ratio": self.sr_ratio,
                "linear_attention": self.linear_attention,
                "qkv_bias": self.qkv_bias,
                "drop_path": self.drop_path,
                "epsilon": self.epsilon,
                "reduction_epsilon": self.reduction_epsilon,
                "attention_dropout": self.attention_dropout,
                "hidden_dropout": self.hidden_dropout,
            }
        )
        return config


def _per_stage(name: str, values: Sequence, num_stages: int) -> list:
    values = list(values)
    if len(values) != num_stages:
        raise ValueError(
            f"`{name}` needs one value per stage ({num_stages} stages, from `depths`); "
            f"received {values}."
        )
    return values


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2Backbone(PresetMixin, FeaturePyramidBackbone):
    """PVT v2 backbone: four stages of overlapping patch embedding + SRA blocks.

    The output is the last stage's NHWC feature map (stride 32); `pyramid_outputs` holds
    `"P2"`..`"P5"` (strides 4..32). With the default `image_shape=(None, None, 3)` one model
    accepts any image size, square or not, down to `minimum_image_size()` pixels (29 for
    b0: stage 1's 8x8 spatial reduction needs an 8-pixel map; 1 with linear SRA). Calls
    check the input's static shape and dtype and raise a `ValueError`/`TypeError` naming
    what was expected; NaN/Inf pixels are not checked and make that image's outputs
    non-finite (see `keras_pvt.models.base.ImageInputMixin`).

    Args:
        hidden_sizes: channels per stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        mlp_ratios: Mix-FFN expansion per stage.
        sr_ratios: spatial-reduction ratios per stage (ignored by linear attention).
        patch_sizes: patch-embedding kernel sizes per stage.
        strides: patch-embedding strides per stage.
        linear_attention: use linear SRA (7x7 adaptive pooling), as `pvt_v2_b2_linear`.
        qkv_bias: bias in the query/key/value projections.
        drop_path_rate: stochastic depth, increasing linearly over all blocks up to this value.
        attention_dropout: dropout on attention weights.
        hidden_dropout: dropout after projections and in the FFN.
        layer_norm_epsilon: epsilon of the block and stage LayerNorms.
        patch_norm_epsilon: epsilon of the patch-embedding LayerNorms (1e-5 in the original
            and timm models, 1e-6 in transformers).
        reduction_norm_epsilon: epsilon of the spatial-reduction LayerNorms (as above).
        image_shape: input shape `(height, width, channels)`; `None` for any size.
        dtype: dtype policy of the model.

    Example:
    ```python
    backbone = keras_pvt.PVTv2Backbone.from_preset("pvt_v2_b0")
    features = keras.Model(backbone.inputs, backbone.pyramid_outputs)(images)
    ```
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        linear_attention: bool = False,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-6,
        patch_norm_epsilon: float = 1e-6,
        reduction_norm_epsilon: float = 1e-6,
        image_shape: tuple = (None, None, 3),
        dtype=None,
        **kwargs,
    ):
        num_stages = len(depths)
        hidden_sizes = _per_stage("hidden_sizes", hidden_sizes, num_stages)
        num_heads = _per_stage("num_heads", num_heads, num_stages)
        mlp_ratios = _per_stage("mlp_ratios", mlp_ratios, num_stages)
        sr_ratios = _per_stage("sr_ratios", sr_ratios, num_stages)
        patch_sizes = _per_stage("patch_sizes", patch_sizes, num_stages)
        strides = _per_stage("strides", strides, num_stages)
        total_blocks = sum(depths)
        drop_rates = [drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]

        # === Functional Model ===
        image_input = keras.layers.Input(shape=image_shape, name="images")
        x = image_input
        pyramid_outputs = {}
        block_index = 0
        for stage in range(num_stages):
            x = OverlapPatchEmbedding(
                hidden_sizes[stage],
                patch_sizes[stage],
                strides[stage],
                epsilon=patch_norm_epsilon,
                dtype=dtype,
                name=f"stage{stage}_patch_embedding",
            )(x)
            for block in range(depths[stage]):
                x = PVTv2Block(
                    hidden_sizes[stage],
                    num_heads[stage],
                    mlp_ratios[stage],
                    sr_ratios[stage],
                    linear_attention=linear_attention,
                    qkv_bias=qkv_bias,
                    drop_path=drop_rates[block_index],
                    epsilon=layer_norm_epsilon,
                    reduction_epsilon=reduction_norm_epsilon,
                    attention_dropout=attention_dropout,
                    hidden_dropout=hidden_dropout,
                    dtype=dtype,
                    name=f"stage{stage}_block{block}",
                )(x)
                block_index += 1
            x = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=dtype, name=f"stage{stage}_layer_norm"
            )(x)
            pyramid_outputs[f"P{stage + 2}"] = x

        super().__init__(inputs=image_input, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.hidden_sizes = hidden_sizes
        self.depths = list(depths)
        self.num_heads = num_heads
        self.mlp_ratios = mlp_ratios
        self.sr_ratios = sr_ratios
        self.patch_sizes = patch_sizes
        self.strides = strides
        self.linear_attention = linear_attention
        self.qkv_bias = qkv_bias
        self.drop_path_rate = drop_path_rate
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.patch_norm_epsilon = patch_norm_epsilon
        self.reduction_norm_epsilon = reduction_norm_epsilon
        self.image_shape = tuple(image_shape)
        self.pyramid_outputs = pyramid_outputs

    def _input_geometry(self) -> list[Downsampling]:
        # Each stage's patch embedding pads k // 2; an SRA convolution (kernel = stride =
        # sr_ratio, no padding) needs a map of at least sr_ratio pixels. Linear SRA pools
        # to 7x7 first, which works from 1 pixel up.
        steps = []
        for stage, (kernel, stride) in enumerate(zip(self.patch_sizes, self.strides)):
            ratio = 1 if self.linear_attention else self.sr_ratios[stage]
            reason = (
                f"stage {stage + 1}'s {ratio}x{ratio} spatial-reduction convolution "
                f"(sr_ratios[{stage}]={ratio})"
            )
            steps.append(Downsampling(kernel, stride, kernel // 2, ratio, reason))
        return steps

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_sizes": self.hidden_sizes,
                "depths": self.depths,
                "num_heads": self.num_heads,
                "mlp_ratios": self.mlp_ratios,
                "sr_ratios": self.sr_ratios,
                "patch_sizes": self.patch_sizes,
                "strides": self.strides,
                "linear_attention": self.linear_attention,
                "qkv_bias": self.qkv_bias,
                "drop_path_rate": self.drop_path_rate,
                "attention_dropout": self.attention_dropout,
                "hidden_dropout": self.hidden_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "patch_norm_epsilon": self.patch_norm_epsilon,
                "reduction_norm_epsilon": self.reduction_norm_epsilon,
                "image_shape": self.image_shape,
            }
        )
        return config
