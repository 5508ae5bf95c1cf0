"""CvT backbone (Wu et al., "CvT: Introducing Convolutions to Vision Transformers", 2021)."""

from collections.abc import Sequence

import keras
from keras import ops

from keras_pvt.kernels import residual
from keras_pvt.layers import (
    MLP,
    ConvAttention,
    DropPath,
    Layer,
    LayerNormalization,
    OverlapPatchEmbedding,
)
from keras_pvt.layers.conv_attention import flatten_map
from keras_pvt.models.base import Downsampling, PyramidBackbone


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTClassToken(Layer):
    """A learned `(1, 1, hidden_size)` cls token, broadcast to the batch of its input.

    Args:
        hidden_size: channels.
        initializer_range: standard deviation of the truncated-normal initialisation.
    """

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self._store_arguments(locals())

    def build(self, input_shape):
        self.cls_token = self.add_weight(
            shape=(1, 1, self.hidden_size),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_range),
            name="cls_token",
        )
        self.built = True

    def call(self, inputs):
        batch = ops.shape(inputs)[0]
        token = ops.cast(self.cls_token, self.compute_dtype)
        return ops.broadcast_to(token, (batch, 1, self.hidden_size))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.hidden_size)


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTLayer(Layer):
    """One CvT encoder layer: pre-norm convolutional attention and MLP, each residual.

    Works on an NHWC map plus, in stages that have one, the `(batch, 1, channels)` cls token,
    which joins the sequence for the LayerNorms, the attention and the MLP but is not
    convolved. Sublayer names follow transformers' `CvtLayer`.

    Call arguments:
        inputs: `(batch, height, width, channels)` map.
        cls_token: optional `(batch, 1, channels)` token.

    Returns:
        the new map, or `(map, cls_token)` when a cls token was given.

    Args (the attention's as in `ConvAttention`, whose `method` and `kernel_size` are
    `qkv_projection_method` and `kernel_qkv` here):
        mlp_ratio: MLP expansion.
        drop_path: stochastic depth of both residual branches.
        hidden_dropout: dropout after the attention output and in the MLP.
        epsilon: LayerNorm epsilon.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_projection_method: str = "dw_bn",
        kernel_qkv: int = 3,
        padding_q: int = 1,
        stride_q: int = 1,
        padding_kv: int = 1,
        stride_kv: int = 2,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        epsilon: float = 1e-5,
        batch_norm_epsilon: float = 1e-5,
        batch_norm_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._store_arguments(locals())
        dtype = self.dtype_policy
        self.layernorm_before = LayerNormalization(
            epsilon=epsilon, dtype=dtype, name="layernorm_before"
        )
        self.attention = ConvAttention(
            hidden_size, num_heads, method=qkv_projection_method, kernel_size=kernel_qkv,
            padding_q=padding_q, stride_q=stride_q, padding_kv=padding_kv, stride_kv=stride_kv,
            qkv_bias=qkv_bias, attention_dropout=attention_dropout, proj_dropout=hidden_dropout,
            batch_norm_epsilon=batch_norm_epsilon, batch_norm_momentum=batch_norm_momentum,
            dtype=dtype, name="attention",
        )
        self.drop_path_layer = DropPath(drop_path, dtype=dtype)
        self.layernorm_after = LayerNormalization(
            epsilon=epsilon, dtype=dtype, name="layernorm_after"
        )
        self.mlp = MLP(
            hidden_size, int(hidden_size * mlp_ratio), dropout=hidden_dropout, dtype=dtype,
            name="mlp",
        )

    def build(self, inputs_shape, cls_token_shape=None):
        tokens_shape = (None, None, self.hidden_size)
        self.layernorm_before.build(tokens_shape)
        self.attention.build((None, None, None, self.hidden_size))
        self.layernorm_after.build(tokens_shape)
        self.mlp.build(tokens_shape)
        self.built = True

    def call(self, inputs, cls_token=None, training=None):
        return self._checkpointed(self._forward, inputs, cls_token, training=training)

    def _forward(self, inputs, cls_token=None, training=None):
        shape = ops.shape(inputs)
        x, num_cls = self._sequence(inputs, cls_token)
        attention = self.attention(*self._attention_inputs(x, shape, num_cls), training=training)
        x = residual(x, self.drop_path_layer(attention, training=training))
        y = self.mlp(self.layernorm_after(x), training=training)
        x = residual(x, self.drop_path_layer(y, training=training))
        out = ops.reshape(x[:, num_cls:], shape)
        return (out, x[:, :num_cls]) if num_cls else out

    def attention_probabilities(self, inputs, cls_token=None):
        """The layer's attention weights for these inputs, `(batch, heads, queries, keys)`."""
        x, num_cls = self._sequence(inputs, cls_token)
        return self.attention.attention_probabilities(
            *self._attention_inputs(x, ops.shape(inputs), num_cls)
        )

    @staticmethod
    def _sequence(inputs, cls_token):
        """The map's tokens with the cls token first, and the number of cls tokens."""
        x = flatten_map(inputs)
        # One cls token at most (not `cls_token.shape[1]`: TensorFlow's graph shapes lose it
        # after slicing a sequence of unknown length).
        if cls_token is None:
            return x, 0
        return ops.concatenate([cls_token, x], axis=1), 1

    def _attention_inputs(self, x, shape, num_cls: int):
        """`LN(x)` as the map the attention convolves and the cls token that joins as is."""
        normed = self.layernorm_before(x)
        return ops.reshape(normed[:, num_cls:], shape), (normed[:, :num_cls] if num_cls else None)

    def compute_output_shape(self, inputs_shape, cls_token_shape=None):
        # Explicit shapes: JAX's symbolic tracing of `call` cannot always prove that the
        # key/value token counts (products of symbolic sizes) are non-negative.
        if cls_token_shape is None:
            return tuple(inputs_shape)
        return tuple(inputs_shape), tuple(cls_token_shape)


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTBackbone(PyramidBackbone):
    """CvT backbone: stages of convolutional token embedding + convolutional-attention layers.

    Each stage embeds its input with a strided convolution and LayerNorm, then runs
    `depths[i]` layers whose queries/keys/values are depthwise-convolution (+ BatchNorm)
    projections of the token map; keys and values are strided (`stride_kv`). A stage may
    carry a learned cls token (by default only the last one), which attends with the map
    but is not convolved; as in transformers, it ends with its stage.

    Outputs:
        - `backbone(images)`: the last stage's `(batch, height / 16, width / 16, channels)`
          NHWC map (for the default strides 4, 2, 2).
        - `backbone.pyramid_outputs`: `"P2"`, `"P3"`, `"P4"` NHWC maps (strides 4, 8, 16).
        - `backbone.cls_token_output`: the last stage's cls token after its last layer, a
          `(batch, channels)` symbolic tensor of the backbone's graph (`None` when the last
          stage has no cls token). It is what `CvTClassifier` classifies; get it with
          `keras.Model(backbone.input, backbone.cls_token_output)`.

    With the default `image_shape=(None, None, 3)` one model accepts any image size.

    Args (one value per stage unless noted; transformers' `CvtConfig` name in brackets):
        hidden_sizes: channels (`embed_dim`).
        depths: layers (`depth`).
        num_heads: attention heads (`num_heads`).
        mlp_ratios: MLP expansion (`mlp_ratio`).
        patch_sizes: token-embedding convolution kernels (`patch_sizes`).
        patch_strides: token-embedding strides (`patch_stride`).
        patch_paddings: token-embedding zero padding (`patch_padding`).
        qkv_projection_methods: `"dw_bn"`, `"avg"` or `"linear"` (`qkv_projection_method`).
        kernel_qkv: kernel of the q/k/v projections (`kernel_qkv`).
        padding_q: query projection padding (`padding_q`).
        stride_q: query projection stride, must be 1 (`stride_q`).
        padding_kv: key/value projection padding (`padding_kv`).
        stride_kv: key/value projection stride (`stride_kv`).
        qkv_bias: bias in the linear q/k/v projections (`qkv_bias`).
        cls_token: whether the stage has a cls token (`cls_token`).
        drop_path_rate: stochastic depth per stage (`drop_path_rate`); within a stage it rises
            linearly from 0 over the layers, as in the original CvT (transformers applies the
            stage's `linspace(0, rate, depth)[stage]` to every layer; training only).
        attention_dropout: dropout on the attention weights (`attention_drop_rate`).
        hidden_dropout: dropout after the embedding, the attention and MLP projections
            (`drop_rate`).
        layer_norm_epsilon: epsilon of every LayerNorm (single value; 1e-5 as torch's default,
            which transformers' CvT uses: its config's `layer_norm_eps` is unused).
        batch_norm_epsilon: epsilon of the projection BatchNorms (single value).
        batch_norm_momentum: momentum of the projection BatchNorms (keras convention, 0.9 ==
            torch's 0.1; single value).
        initializer_range: standard deviation of the cls tokens' initialisation.
        image_shape: input shape `(height, width, channels)`; `None` for any size
            (`num_channels` is the channel count).
        dtype: dtype policy of the model.

    Example:
    ```python
    backbone = keras_pvt.CvTBackbone.from_preset("cvt_13")
    features = keras.Model(backbone.inputs, backbone.pyramid_outputs)(images)
    cls_features = keras.Model(backbone.inputs, backbone.cls_token_output)(images)
    ```
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (64, 192, 384),
        depths: Sequence[int] = (1, 2, 10),
        num_heads: Sequence[int] = (1, 3, 6),
        mlp_ratios: Sequence[float] = (4.0, 4.0, 4.0),
        patch_sizes: Sequence[int] = (7, 3, 3),
        patch_strides: Sequence[int] = (4, 2, 2),
        patch_paddings: Sequence[int] = (2, 1, 1),
        qkv_projection_methods: Sequence[str] = ("dw_bn", "dw_bn", "dw_bn"),
        kernel_qkv: Sequence[int] = (3, 3, 3),
        padding_q: Sequence[int] = (1, 1, 1),
        stride_q: Sequence[int] = (1, 1, 1),
        padding_kv: Sequence[int] = (1, 1, 1),
        stride_kv: Sequence[int] = (2, 2, 2),
        qkv_bias: Sequence[bool] = (True, True, True),
        cls_token: Sequence[bool] = (False, False, True),
        drop_path_rate: Sequence[float] = (0.0, 0.0, 0.0),
        attention_dropout: Sequence[float] = (0.0, 0.0, 0.0),
        hidden_dropout: Sequence[float] = (0.0, 0.0, 0.0),
        layer_norm_epsilon: float = 1e-5,
        batch_norm_epsilon: float = 1e-5,
        batch_norm_momentum: float = 0.9,
        initializer_range: float = 0.02,
        image_shape: tuple = (None, None, 3),
        dtype=None,
        **kwargs,
    ):
        config = self._arguments(locals())
        num_stages = len(depths)

        # === Functional Model ===
        image_input = keras.layers.Input(shape=config.image_shape, name="images")
        x = image_input
        cls = None
        pyramid_outputs = {}
        for s in range(num_stages):
            hidden = config.hidden_sizes[s]
            x = OverlapPatchEmbedding(
                hidden, config.patch_sizes[s], config.patch_strides[s],
                padding=config.patch_paddings[s], epsilon=layer_norm_epsilon, dtype=dtype,
                name=f"stage{s}_embedding",
            )(x)
            x = keras.layers.Dropout(
                config.hidden_dropout[s], dtype=dtype, name=f"stage{s}_embedding_dropout"
            )(x)
            cls = None
            if config.cls_token[s]:
                cls = CvTClassToken(
                    hidden, initializer_range=initializer_range, dtype=dtype,
                    name=f"stage{s}_cls_token",
                )(x)
            depth = depths[s]
            rate = config.drop_path_rate[s]
            for b in range(depth):
                layer = CvTLayer(
                    hidden, config.num_heads[s], mlp_ratio=config.mlp_ratios[s],
                    qkv_projection_method=config.qkv_projection_methods[s],
                    kernel_qkv=config.kernel_qkv[s], padding_q=config.padding_q[s],
                    stride_q=config.stride_q[s], padding_kv=config.padding_kv[s],
                    stride_kv=config.stride_kv[s], qkv_bias=config.qkv_bias[s],
                    drop_path=rate * b / max(depth - 1, 1),
                    attention_dropout=config.attention_dropout[s],
                    hidden_dropout=config.hidden_dropout[s], epsilon=layer_norm_epsilon,
                    batch_norm_epsilon=batch_norm_epsilon,
                    batch_norm_momentum=batch_norm_momentum, dtype=dtype,
                    name=f"stage{s}_layer{b}",
                )
                if cls is None:
                    x = layer(x)
                else:
                    x, cls = layer(x, cls)
            pyramid_outputs[f"P{s + 2}"] = x
        cls_token_output = None
        if cls is not None:
            cls_token_output = keras.layers.Reshape(
                (config.hidden_sizes[-1],), dtype=dtype, name="cls_token_output"
            )(cls)

        super().__init__(inputs=image_input, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self._set_config(config)
        self.pyramid_outputs = pyramid_outputs
        self.cls_token_output = cls_token_output

    def _input_geometry(self) -> list:
        """The token embeddings as down-sampling steps (for the input-size checks and the
        minimum image size); each stage's map must also fit its key/value projection."""
        steps = []
        for s in range(len(self.depths)):
            kv_minimum = 1
            if self.qkv_projection_methods[s] != "linear" and self.depths[s]:
                kv_minimum = max(self.kernel_qkv[s] - 2 * self.padding_kv[s], 1)
            steps.append(Downsampling(
                self.patch_sizes[s], self.patch_strides[s], self.patch_paddings[s], kv_minimum,
                f"stage {s + 1}'s {self.kernel_qkv[s]}x{self.kernel_qkv[s]} key/value "
                f"projection (padding_kv[{s}]={self.padding_kv[s]})",
            ))
        return steps
