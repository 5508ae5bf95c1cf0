"""PVT v1 backbone (Wang et al., "Pyramid Vision Transformer: A Versatile Backbone for Dense
Prediction without Convolutions", ICCV 2021)."""

from collections.abc import Sequence

import keras
from keras import ops
from keras_hub.models import FeaturePyramidBackbone

from keras_pvt.layers import (
    MLP,
    DropPath,
    OverlapPatchEmbedding,
    PositionEmbedding,
    SpatialReductionAttention,
)
from keras_pvt.models.base import PresetMixin


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTBlock(keras.layers.Layer):
    """One PVT v1 encoder block: pre-norm SRA and a plain MLP, each residual.

    Takes an NHWC map (stages with spatial reduction) or a `(batch, tokens, channels)`
    sequence (the last stage, which carries the class token and does not reduce).
    Sublayer names follow transformers' `PvtLayer`, so the weight map is a table.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
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
            hidden_size, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
            epsilon=reduction_epsilon, attention_dropout=attention_dropout,
            proj_dropout=hidden_dropout, dtype=dtype, name="attention",
        )
        self.drop_path_layer = DropPath(drop_path, dtype=dtype)
        self.layer_norm_2 = keras.layers.LayerNormalization(
            epsilon=epsilon, dtype=dtype, name="layer_norm_2"
        )
        self.mlp = MLP(
            hidden_size, int(hidden_size * mlp_ratio), dropout=hidden_dropout,
            dtype=dtype, name="mlp",
        )

    def build(self, input_shape):
        for layer in (self.layer_norm_1, self.attention, self.layer_norm_2, self.mlp):
            layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = self.attention(self.layer_norm_1(inputs), training=training)
        x = inputs + self.drop_path_layer(x, training=training)
        y = self.mlp(self.layer_norm_2(x), training=training)
        return x + self.drop_path_layer(y, training=training)

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
                "qkv_bias": self.qkv_bias,
                "drop_path": self.drop_path,
                "epsilon": self.epsilon,
                "reduction_epsilon": self.reduction_epsilon,
                "attention_dropout": self.attention_dropout,
                "hidden_dropout": self.hidden_dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_pvt")
class ClassTokenSplit(keras.layers.Layer):
    """Splits `(batch, 1 + H * W, C)` tokens into the class token `(batch, C)` and the NHWC
    map `(batch, H, W, C)`; `H` and `W` are read from a reference map of that grid."""

    def call(self, tokens, reference):
        shape = ops.shape(reference)
        feature_map = ops.reshape(tokens[:, 1:], (shape[0], shape[1], shape[2], tokens.shape[-1]))
        return tokens[:, 0], feature_map

    def compute_output_shape(self, tokens_shape, reference_shape):
        batch, height, width, _ = reference_shape
        channels = tokens_shape[-1]
        return (batch, channels), (batch, height, width, channels)


def _per_stage(name: str, values: Sequence, num_stages: int) -> list:
    values = list(values)
    if len(values) != num_stages:
        raise ValueError(
            f"`{name}` needs one value per stage ({num_stages} stages, from `depths`); "
            f"received {values}."
        )
    return values


def position_grid_sizes(
    position_embedding_shape: Sequence[int], strides: Sequence[int]
) -> list[tuple[int, int]]:
    """The stored position-embedding grid of each stage, as the reference models size them.

    Stage 0 sees the `position_embedding_shape` image, stage `i > 0` an image of
    `size // 2 ** (i + 1)` (transformers' `PvtEncoder` and the original repository both
    assume that the stages before it reduce by 4, 2, 2...); each grid is that size divided
    by the stage's stride.
    """
    grids = []
    for stage, stride in enumerate(strides):
        sizes = [s if stage == 0 else s // 2 ** (stage + 1) for s in position_embedding_shape]
        grid = tuple(s // stride for s in sizes)
        if min(grid) < 1:
            raise ValueError(
                f"position_embedding_shape={tuple(position_embedding_shape)} leaves stage "
                f"{stage} with an empty position-embedding grid {grid}."
            )
        grids.append(grid)
    return grids


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTBackbone(PresetMixin, FeaturePyramidBackbone):
    """PVT v1 backbone: four stages of non-overlapping patch embedding, learned position
    embeddings and SRA blocks; a class token joins the last stage.

    Outputs:
    - the model's output is the last stage's NHWC map after the final LayerNorm
      (stride 32), without the class token;
    - `pyramid_outputs`: `"P2"`..`"P5"` NHWC maps (strides 4..32). `P2`..`P4` are the raw
      block outputs (PVT v1 has no per-stage norms); `P5` is the output above;
    - `cls_token_output`: the class token after the final LayerNorm `(batch, channels)`,
      the feature `PVTClassifier` classifies. Build a model from it with
      `keras.Model(backbone.input, backbone.cls_token_output)`.

    Position embeddings are stored for `position_embedding_shape` (the pretraining size) and
    resized bilinearly (`align_corners=False`, like the original repository) to the actual
    grid of every stage, so with the default `image_shape=(None, None, 3)` one model
    accepts any image size, square or not. At the pretraining size they are used unchanged.

    Args:
        hidden_sizes: channels per stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP expansion per stage.
        sr_ratios: spatial-reduction ratios per stage; the last must be 1 (its sequence
            holds the class token).
        patch_sizes: patch-embedding kernel sizes per stage.
        strides: patch-embedding strides per stage (equal to `patch_sizes` in every
            published model: non-overlapping patches).
        position_embedding_shape: `(height, width)` of the images the position embeddings
            were trained for (transformers' `image_size`).
        qkv_bias: bias in the query/key/value projections.
        drop_path_rate: stochastic depth, increasing linearly over all blocks up to this value.
        attention_dropout: dropout on attention weights.
        hidden_dropout: dropout after the position embeddings, the projections and in the MLP.
        layer_norm_epsilon: epsilon of the block LayerNorms and the final LayerNorm.
        patch_norm_epsilon: epsilon of the patch-embedding LayerNorms (1e-5 in the original
            repository, 1e-6 in transformers).
        reduction_norm_epsilon: epsilon of the spatial-reduction LayerNorms (as above).
        image_shape: input shape `(height, width, channels)`; `None` for any size.
        dtype: dtype policy of the model.

    Example:
    ```python
    backbone = keras_pvt.PVTBackbone.from_preset("pvt_tiny")
    features = keras.Model(backbone.inputs, backbone.pyramid_outputs)(images)
    embedding = keras.Model(backbone.inputs, backbone.cls_token_output)(images)
    ```
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        patch_sizes: Sequence[int] = (4, 2, 2, 2),
        strides: Sequence[int] = (4, 2, 2, 2),
        position_embedding_shape: int | Sequence[int] = (224, 224),
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
        if sr_ratios[-1] != 1:
            raise ValueError(
                "The last stage carries the class token in its sequence, so it cannot be "
                f"spatially reduced: sr_ratios[-1] must be 1; received sr_ratios={sr_ratios}."
            )
        if isinstance(position_embedding_shape, int):
            position_embedding_shape = (position_embedding_shape, position_embedding_shape)
        position_embedding_shape = tuple(int(s) for s in position_embedding_shape)
        grids = position_grid_sizes(position_embedding_shape, strides)
        total_blocks = sum(depths)
        drop_rates = [
            drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)
        ]

        # === Functional Model ===
        image_input = keras.layers.Input(shape=image_shape, name="images")
        x = image_input
        pyramid_outputs = {}
        block_index = 0
        for stage in range(num_stages):
            last = stage == num_stages - 1
            x = OverlapPatchEmbedding(
                hidden_sizes[stage], patch_sizes[stage], strides[stage], padding=0,
                epsilon=patch_norm_epsilon, dtype=dtype, name=f"stage{stage}_patch_embedding",
            )(x)
            grid_map = x
            x = PositionEmbedding(
                grids[stage], cls_token=last, dtype=dtype, name=f"stage{stage}_position_embedding"
            )(x)
            x = keras.layers.Dropout(
                hidden_dropout, dtype=dtype, name=f"stage{stage}_position_dropout"
            )(x)
            for block in range(depths[stage]):
                x = PVTBlock(
                    hidden_sizes[stage], num_heads[stage], mlp_ratios[stage], sr_ratios[stage],
                    qkv_bias=qkv_bias, drop_path=drop_rates[block_index],
                    epsilon=layer_norm_epsilon, reduction_epsilon=reduction_norm_epsilon,
                    attention_dropout=attention_dropout, hidden_dropout=hidden_dropout,
                    dtype=dtype, name=f"stage{stage}_block{block}",
                )(x)
                block_index += 1
            if not last:
                pyramid_outputs[f"P{stage + 2}"] = x
        x = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="layer_norm"
        )(x)
        cls_token_output, x = ClassTokenSplit(dtype=dtype, name="cls_token_split")(x, grid_map)
        pyramid_outputs[f"P{num_stages + 1}"] = x

        super().__init__(inputs=image_input, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.hidden_sizes = hidden_sizes
        self.depths = list(depths)
        self.num_heads = num_heads
        self.mlp_ratios = mlp_ratios
        self.sr_ratios = sr_ratios
        self.patch_sizes = patch_sizes
        self.strides = strides
        self.position_embedding_shape = position_embedding_shape
        self.qkv_bias = qkv_bias
        self.drop_path_rate = drop_path_rate
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.patch_norm_epsilon = patch_norm_epsilon
        self.reduction_norm_epsilon = reduction_norm_epsilon
        self.image_shape = tuple(image_shape)
        self.pyramid_outputs = pyramid_outputs
        self.cls_token_output = cls_token_output

    def _input_geometry(self) -> list:
        """The down-sampling steps behind `minimum_image_size()` (32 for every preset)."""
        from keras_pvt.models.base import Downsampling

        # Patch embeddings do not pad; an SRA convolution (kernel = stride = sr_ratio)
        # needs a map of at least sr_ratio pixels.
        steps = []
        for stage, (kernel, stride) in enumerate(zip(self.patch_sizes, self.strides)):
            ratio = self.sr_ratios[stage]
            reason = (
                f"stage {stage + 1}'s {ratio}x{ratio} spatial-reduction convolution "
                f"(sr_ratios[{stage}]={ratio})"
            )
            steps.append(Downsampling(kernel, stride, 0, ratio, reason))
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
                "position_embedding_shape": self.position_embedding_shape,
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
