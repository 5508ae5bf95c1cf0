"""TensorFlow kernels: Mix-FFN in independent pieces, which the inter-op threads run side by
side (TensorFlow's own dense and depthwise kernels are already the fastest measured)."""

import tensorflow as tf
from keras import ops

from keras_pvt.kernels.generic import inference_pieces


def mix_ffn(layer, inputs, training=None):
    per_chunk = inference_pieces(layer, inputs, training)
    if per_chunk is None:
        return layer.mix(inputs, training=training)
    pieces = ops.split(inputs, inputs.shape[0] // per_chunk, axis=0)
    return ops.concatenate([layer.mix(piece, training=False) for piece in pieces], axis=0)


def score_gradient(forward, x, model):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score, aux = forward(x, None)
    return aux, tape.gradient(score, x)
