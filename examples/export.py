"""Export a PVT v2 classifier to TF SavedModel, ONNX and LiteRT (TFLite), and check each.

    KERAS_BACKEND=tensorflow python examples/export.py [--preset pvt_v2_b0] [--output DIR]

Each artifact is reloaded with its own runtime (`tf.saved_model.load`, onnxruntime, the
TFLite interpreter) and compared with Keras on two batch sizes. Which formats a backend can
produce:

| format | TensorFlow | JAX | PyTorch |
|---|---|---|---|
| SavedModel | any batch and image size | any batch and image size | - |
| ONNX | any batch and image size | - | any batch, fixed image size |
| LiteRT | any batch and image size | - | - |

A format the backend cannot produce is reported with the backend to use instead. The
artifacts compute logits from a normalised NHWC float32 batch: run the model's preprocessor
(resize, scale, ImageNet mean/std) on raw images first, as below.
"""

import argparse
import time
from pathlib import Path

import keras
import numpy as np
from PIL import Image

import keras_pvt
from keras_pvt.cli import sample_image_path
from keras_pvt.export import ExportError

FILES = {"tf_saved_model": "saved_model", "onnx": "model.onnx", "litert": "model.tflite"}


def run_saved_model(path, images):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # keep a reference while serving
    return loaded.serve(images).numpy()


def run_onnx(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def run_litert(path, images):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow 2.21 still ships the interpreter (deprecated)
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    interpreter = Interpreter(model_path=str(path))
    (image_input,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(image_input["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(image_input["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


RUNTIMES = {"tf_saved_model": run_saved_model, "onnx": run_onnx, "litert": run_litert}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pvt_v2_b0", help="preset name, hf://, or path")
    parser.add_argument("--output", default="exported", help="directory for the artifacts")
    parser.add_argument("--formats", nargs="+", default=list(FILES), choices=list(FILES))
    args = parser.parse_args()

    model = keras_pvt.PVTv2Classifier.from_preset(args.preset)
    # The artifacts take preprocessed batches: the bundled sample image, resized and
    # normalised by the preprocessor, repeated into batches of 1 and 3.
    raw = np.asarray(Image.open(sample_image_path()).convert("RGB"))[None]
    image = keras.ops.convert_to_numpy(model.preprocessor(raw)).astype("float32")
    batches = [image, np.concatenate([image, image[:, ::-1], image[:, :, ::-1]])]
    expected = [keras.ops.convert_to_numpy(model(x)) for x in batches]

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    print(f"backend: {keras.backend.backend()}")
    for format in args.formats:
        path = output / FILES[format]
        start = time.perf_counter()
        try:
            model.export(str(path), format=format, verbose=False)
        except ExportError as error:
            print(f"{format:15s} not on this backend: {error}")
            continue
        seconds = time.perf_counter() - start
        delta = max(
            float(np.abs(RUNTIMES[format](path, x) - y).max())
            for x, y in zip(batches, expected)
        )
        print(f"{format:15s} {path}  export {seconds:5.1f} s  max |delta| vs Keras {delta:.1e}")
    top = model.decode_predictions(expected[0], top=1)[0][0]
    print(f"top-1 for {sample_image_path().name}: {top[1]} ({top[2]:.1%})")


if __name__ == "__main__":
    main()
