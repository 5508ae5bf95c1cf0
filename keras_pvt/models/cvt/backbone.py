"""CvT backbone (Wu et al., "CvT: Introducing Convolutions to Vision Transformers", 2021)."""

from collections.abc import Sequence

import keras
from keras import ops
from keras_hub.models import FeaturePyramidBackbone

from keras_pvt.layers import MLP, ConvAttention, DropPath, OverlapPatchEmbedding
from keras_pvt.layers.conv_attention import flatten_map
from keras_pvt.models.base import PresetMixin


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTClassToken(keras.layers.Layer):
    """A learned `(1, 1, hidden_size)` cls token, broadcast to the batch of its input.

    Args:
        hidden_size: channels.
        initializer_range: standard deviation of the truncated-normal initialisation.
    """

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range

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

    def get_config(self):
        config = super().get_config()
        config.update(
            {"hidden_size": self.hidden_size, "initializer_range": self.initializer_range}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTLayer(keras.layers.Layer):
    """One CvT encoder layer: pre-norm convolutional attention and MLP, each residual.

    Works on an NHWC map plus, in stages that have one, the `(batch, 1, channels)` cls token,
    which joins the sequence for the LayerNorms, the attention and the MLP but is not
    convolved. Sublayer names follow transformers' `CvtLayer`.

    Call arguments:
        inputs: `(batch, height, width, channels)` map.
        cls_token: optional `(batch, 1, channels)` token.

    Returns:
        the new map, or `(map, cls_token)` when a cls token was given.

    Args:
        hidden_size: channels.
        num_heads: attention heads.
        mlp_ratio: MLP expansion.
        qkv_projection_method: `"dw_bn"`, `"avg"` or `"linear"` (see `ConvAttention`).
        kernel_qkv: kernel of the q/k/v projections.
        padding_q: query projection padding.
        stride_q: query projection stride (1).
        padding_kv: key/value projection padding.
        stride_kv: key/value projection stride.
        qkv_bias: bias in the linear q/k/v projections.
        drop_path: stochastic depth of both residual branches.
        attention_dropout: dropout on the attention weights.
        hidden_dropout: dropout after the attention output and in the MLP.
        epsilon: LayerNorm epsilon.
        batch_norm_epsilon: epsilon of the projections' BatchNorm.
        batch_norm_momentum: momentum of the projections' BatchNorm (keras convention).
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
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_projection_method = qkv_projection_method
        self.kernel_qkv = kernel_qkv
        self.padding_q = padding_q
        self.stride_q = stride_q
        self.padding_kv = padding_kv
        self.stride_kv = stride_kv
        self.qkv_bias = qkv_bias
        self.drop_path = drop_path
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.epsilon = epsilon
        self.batch_norm_epsilon = batch_norm_epsilon
        self.batch_norm_momentum = batch_norm_momentum
        dtype = self.dtype_policy
        self.layernorm_before = keras.layers.LayerNormalization(
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
        self.layernorm_after = keras.layers.LayerNormalization(
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
        shape = ops.shape(inputs)
        x = flatten_map(inputs)
        # One cls token at most (not `cls_token.shape[1]`: TensorFlow's graph shapes lose it
        # after slicing a sequence of unknown length).
        num_cls = 0 if cls_token is None else 1
        if num_cls:
            x = ops.concatenate([cls_token, x], axis=1)
        normed = self.layernorm_before(x)
        attention = self.attention(
            ops.reshape(normed[:, num_cls:], shape),
            cls_token=normed[:, :num_cls] if num_cls else None,
            training=training,
        )
        x = x + self.drop_path_layer(attention, training=training)
        y = self.mlp(self.layernorm_after(x), training=training)
        x = x + self.drop_path_layer(y, training=training)
        out = ops.reshape(x[:, num_cls:], shape)
        return (out, x[:, :num_cls]) if num_cls else out

    def compute_output_shape(self, inputs_shape, cls_token_shape=None):
        # Explicit shapes: JAX's symbolic tracing of `call` cannot always prove that the
        # key/value token counts (products of symbolic sizes) are non-negative.
        if cls_token_shape is None:
            return tuple(inputs_shape)
        return tuple(inputs_shape), tuple(cls_token_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "qkv_projection_method": self.qkv_projection_method,
                "kernel_qkv": self.kernel_qkv,
                "padding_q": self.padding_q,
                "stride_q": self.stride_q,
                "padding_kv": self.padding_kv,
                "stride_kv": self.stride_kv,
                "qkv_bias": self.qkv_bias,
                "drop_path": self.drop_path,
                "attention_dropout": self.attention_dropout,
                "hidden_dropout": self.hidden_dropout,
                "epsilon": self.epsilon,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "batch_norm_momentum": self.batch_norm_momentum,
            }
        )
        return config


def _per_stage(name: str, values, num_stages: int) -> list:
    """One value per stage; a single (non-sequence) value is used for every stage."""
    if isinstance(values, (str, bool, int, float)):
        return [values] * num_stages
    values = list(values)
    if len(values) != num_stages:
        raise ValueError(
            f"`{name}` needs one value per stage ({num_stages} stages, from `depths`); "
            f"received {values}."
        )
    return values


@keras.saving.register_keras_serializable(package="keras_pvt")
class CvTBackbone(PresetMixin, FeaturePyramidBackbone):
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
        num_stages = len(depths)
        stage = {
            name: _per_stage(name, value, num_stages)
            for name, value in {
                "hidden_sizes": hidden_sizes, "num_heads": num_heads, "mlp_ratios": mlp_ratios,
                "patch_sizes": patch_sizes, "patch_strides": patch_strides,
                "patch_paddings": patch_paddings,
                "qkv_projection_methods": qkv_projection_methods, "kernel_qkv": kernel_qkv,
                "padding_q": padding_q, "stride_q": stride_q, "padding_kv": padding_kv,
                "stride_kv": stride_kv, "qkv_bias": qkv_bias, "cls_token": cls_token,
                "drop_path_rate": drop_path_rate, "attention_dropout": attention_dropout,
                "hidden_dropout": hidden_dropout,
            }.items()
        }

        # === Functional Model ===
        image_input = keras.layers.Input(shape=image_shape, name="images")
        x = image_input
        cls = None
        pyramid_outputs = {}
        for s in range(num_stages):
            hidden = stage["hidden_sizes"][s]
            x = OverlapPatchEmbedding(
                hidden, stage["patch_sizes"][s], stage["patch_strides"][s],
                padding=stage["patch_paddings"][s], epsilon=layer_norm_epsilon, dtype=dtype,
                name=f"stage{s}_embedding",
            )(x)
            x = keras.layers.Dropout(
                stage["hidden_dropout"][s], dtype=dtype, name=f"stage{s}_embedding_dropout"
            )(x)
            cls = None
            if stage["cls_token"][s]:
                cls = CvTClassToken(
                    hidden, initializer_range=initializer_range, dtype=dtype,
                    name=f"stage{s}_cls_token",
                )(x)
            depth = depths[s]
            rate = stage["drop_path_rate"][s]
            for b in range(depth):
                layer = CvTLayer(
                    hidden, stage["num_heads"][s], mlp_ratio=stage["mlp_ratios"][s],
                    qkv_projection_method=stage["qkv_projection_methods"][s],
                    kernel_qkv=stage["kernel_qkv"][s], padding_q=stage["padding_q"][s],
                    stride_q=stage["stride_q"][s], padding_kv=stage["padding_kv"][s],
                    stride_kv=stage["stride_kv"][s], qkv_bias=stage["qkv_bias"][s],
                    drop_path=rate * b / max(depth - 1, 1),
                    attention_dropout=stage["attention_dropout"][s],
                    hidden_dropout=stage["hidden_dropout"][s], epsilon=layer_norm_epsilon,
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
                (stage["hidden_sizes"][-1],), dtype=dtype, name="cls_token_output"
            )(cls)

        super().__init__(inputs=image_input, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.hidden_sizes = stage["hidden_sizes"]
        self.depths = list(depths)
        self.num_heads = stage["num_heads"]
        self.mlp_ratios = stage["mlp_ratios"]
        self.patch_sizes = stage["patch_sizes"]
        self.patch_strides = stage["patch_strides"]
        self.patch_paddings = stage["patch_paddings"]
        self.qkv_projection_methods = stage["qkv_projection_methods"]
        self.kernel_qkv = stage["kernel_qkv"]
        self.padding_q = stage["padding_q"]
        self.stride_q = stage["stride_q"]
        self.padding_kv = stage["padding_kv"]
        self.stride_kv = stage["stride_kv"]
        self.qkv_bias = stage["qkv_bias"]
        self.cls_token = stage["cls_token"]
        self.drop_path_rate = stage["drop_path_rate"]
        self.attention_dropout = stage["attention_dropout"]
        self.hidden_dropout = stage["hidden_dropout"]
        self.layer_norm_epsilon = layer_norm_epsilon
        self.batch_norm_epsilon = batch_norm_epsilon
        self.batch_norm_momentum = batch_norm_momentum
        self.initializer_range = initializer_range
        self.image_shape = tuple(image_shape)
        self.pyramid_outputs = pyramid_outputs
        self.cls_token_output = cls_token_output

    def _input_geometry(self) -> list:
        """The token embeddings as down-sampling steps (for the input-size checks and the
        minimum image size); each stage's map must also fit its key/value projection."""
        from keras_pvt.models.base import Downsampling

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

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_sizes": self.hidden_sizes,
                "depths": self.depths,
                "num_heads": self.num_heads,
                "mlp_ratios": self.mlp_ratios,
                "patch_sizes": self.patch_sizes,
                "patch_strides": self.patch_strides,
                "patch_paddings": self.patch_paddings,
                "qkv_projection_methods": self.qkv_projection_methods,
                "kernel_qkv": self.kernel_qkv,
                "padding_q": self.padding_q,
                "stride_q": self.stride_q,
                "padding_kv": self.padding_kv,
                "stride_kv": self.stride_kv,
                "qkv_bias": self.qkv_bias,
                "cls_token": self.cls_token,
                "drop_path_rate": self.drop_path_rate,
                "attention_dropout": self.attention_dropout,
                "hidden_dropout": self.hidden_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "batch_norm_momentum": self.batch_norm_momentum,
                "initializer_range": self.initializer_range,
                "image_shape": self.image_shape,
            }
        )
        return config
