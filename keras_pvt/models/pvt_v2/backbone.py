"""PVT v2 backbone (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer")."""

from collections.abc import Sequence

import keras

from keras_pvt.layers import OverlapPatchEmbedding, PVTv2Block, encoder_stage
from keras_pvt.models.base import Downsampling, PyramidBackbone, spatial_reduction_steps


@keras.saving.register_keras_serializable(package="keras_pvt")
class PVTv2Backbone(PyramidBackbone):
    """PVT v2 backbone: four stages of overlapping patch embedding + SRA blocks.

    The output is the last stage's NHWC feature map (stride 32); `pyramid_outputs` holds
    `"P2"`..`"P5"` (strides 4..32). With the default `image_shape=(None, None, 3)` one model
    accepts any image size, square or not, down to `minimum_image_size()` pixels (29 for
    b0: stage 1's 8x8 spatial reduction needs an 8-pixel map; 1 with linear SRA). Calls
    check the input's static shape and dtype and raise a `ValueError`/`TypeError` naming
    what was expected; NaN/Inf pixels are not checked and make that image's outputs
    non-finite (see `keras_pvt.models.base.ImageInputMixin`).

    Args (a per-stage argument also takes a single value for all stages):
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
        config = self._arguments(locals())

        # === Functional Model ===
        image_input = keras.layers.Input(shape=config.image_shape, name="images")
        x = image_input
        pyramid_outputs = {}
        for stage in range(len(config.depths)):
            x = OverlapPatchEmbedding(
                config.hidden_sizes[stage], config.patch_sizes[stage], config.strides[stage],
                epsilon=patch_norm_epsilon, dtype=dtype, name=f"stage{stage}_patch_embedding",
            )(x)
            x = encoder_stage(x, stage, config, PVTv2Block, dtype=dtype)
            x = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=dtype, name=f"stage{stage}_layer_norm"
            )(x)
            pyramid_outputs[f"P{stage + 2}"] = x

        super().__init__(inputs=image_input, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self._set_config(config)
        self.pyramid_outputs = pyramid_outputs

    def _input_geometry(self) -> list[Downsampling]:
        # Patch embeddings pad k // 2; linear SRA pools to 7x7 first, which works from 1 px.
        ratios = [1] * len(self.sr_ratios) if self.linear_attention else self.sr_ratios
        paddings = [kernel // 2 for kernel in self.patch_sizes]
        return spatial_reduction_steps(self.patch_sizes, self.strides, paddings, ratios)
