"""PVT v1 backbone (Wang et al., "Pyramid Vision Transformer: A Versatile Backbone for Dense
Prediction without Convolutions", ICCV 2021)."""

from collections.abc import Sequence

import keras
from keras import ops

from keras_pvt.layers import (
    Layer,
    OverlapPatchEmbedding,
    PositionEmbedding,
    PVTBlock,
    encoder_stage,
)
from keras_pvt.models.base import Downsampling, PyramidBackbone, spatial_reduction_steps


@keras.saving.register_keras_serializable(package="keras_pvt")
class ClassTokenSplit(Layer):
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
class PVTBackbone(PyramidBackbone):
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

    Args (as `PVTv2Backbone`'s, where not listed; every per-stage argument also takes a
    single value for all stages):
        mlp_ratios: MLP expansion per stage.
        sr_ratios: spatial-reduction ratios per stage; the last must be 1 (its sequence
            holds the class token).
        strides: patch-embedding strides per stage (equal to `patch_sizes` in every
            published model: non-overlapping patches, no padding).
        position_embedding_shape: `(height, width)` of the images the position embeddings
            were trained for (transformers' `image_size`).
        hidden_dropout: dropout after the position embeddings, the projections and in the MLP.
        layer_norm_epsilon: epsilon of the block LayerNorms and the final LayerNorm.
        patch_norm_epsilon: epsilon of the patch-embedding LayerNorms (1e-5 in the original
            repository, 1e-6 in transformers).

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
        config = self._arguments(locals())
        if config.sr_ratios[-1] != 1:
            raise ValueError(
                "The last stage carries the class token in its sequence, so it cannot be "
                f"spatially reduced: sr_ratios[-1] must be 1; received {config.sr_ratios}."
            )
        if isinstance(position_embedding_shape, int):
            position_embedding_shape = (position_embedding_shape, position_embedding_shape)
        config.position_embedding_shape = tuple(int(s) for s in position_embedding_shape)
        grids = position_grid_sizes(config.position_embedding_shape, config.strides)
        num_stages = len(config.depths)

        # === Functional Model ===
        image_input = keras.layers.Input(shape=config.image_shape, name="images")
        x = image_input
        pyramid_outputs = {}
        for stage in range(num_stages):
            last = stage == num_stages - 1
            x = OverlapPatchEmbedding(
                config.hidden_sizes[stage], config.patch_sizes[stage], config.strides[stage],
                padding=0, epsilon=patch_norm_epsilon, dtype=dtype,
                name=f"stage{stage}_patch_embedding",
            )(x)
            grid_map = x
            x = PositionEmbedding(
                grids[stage], cls_token=last, dtype=dtype, name=f"stage{stage}_position_embedding"
            )(x)
            x = keras.layers.Dropout(
                hidden_dropout, dtype=dtype, name=f"stage{stage}_position_dropout"
            )(x)
            x = encoder_stage(x, stage, config, PVTBlock, dtype=dtype)
            if not last:
                pyramid_outputs[f"P{stage + 2}"] = x
        x = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="layer_norm"
        )(x)
        cls_token_output, x = ClassTokenSplit(dtype=dtype, name="cls_token_split")(x, grid_map)
        pyramid_outputs[f"P{num_stages + 1}"] = x

        super().__init__(inputs=image_input, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self._set_config(config)
        self.pyramid_outputs = pyramid_outputs
        self.cls_token_output = cls_token_output

    def _input_geometry(self) -> list[Downsampling]:
        """The down-sampling steps behind `minimum_image_size()` (32 for every preset)."""
        # Patch embeddings do not pad.
        paddings = [0] * len(self.patch_sizes)
        return spatial_reduction_steps(self.patch_sizes, self.strides, paddings, self.sr_ratios)
