"""Classify images with a pretrained PVT v2 and print the top-5 labels.

    python examples/classify.py [IMAGE ...] [--preset pvt_v2_b0]

Without an image, the sample bundled with keras_pvt is used.
"""

import argparse

import numpy as np
from PIL import Image

import keras_pvt
from keras_pvt.cli import sample_image_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", default=[sample_image_path()])
    parser.add_argument("--preset", default="pvt_v2_b0")
    args = parser.parse_args()

    model = keras_pvt.PVTv2Classifier.from_preset(args.preset)
    for path in args.images:
        image = np.asarray(Image.open(path).convert("RGB"))
        # predict() runs the preprocessor: resize to 224x224, scale, ImageNet mean/std.
        logits = model.predict(image[None], verbose=0)
        print(path)
        for index, label, probability in model.decode_predictions(logits, top=5)[0]:
            print(f"  {probability:7.2%}  {label}  [{index}]")


if __name__ == "__main__":
    main()
