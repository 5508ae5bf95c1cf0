"""Fine-tune a pretrained PVT v2 on a small dataset and report its validation accuracy.

    python examples/fine_tune.py [--preset pvt_v2_b0] [--image-size 128] [--output DIR]

The dataset is made on the fly (no download): noisy images of four coloured shapes. The
usual two-step recipe:

1. new head (`num_classes=4`), backbone frozen: train the head only;
2. backbone unfrozen, compiled again with a 10x lower learning rate: fine-tune everything.

Runs on any Keras backend (`KERAS_BACKEND=jax|tensorflow|torch`).
"""

import argparse

import keras
import numpy as np

import keras_pvt

CLASSES = ("red square", "green disc", "blue triangle", "yellow cross")
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 210, 40]], "float32")


def shapes_dataset(samples: int, size: int = 64, seed: int = 0):
    """`samples` uint8 RGB images of one shape each on a noisy background, and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(samples) % len(CLASSES)
    rng.shuffle(labels)
    rows, cols = np.mgrid[0:size, 0:size] / size
    images = np.empty((samples, size, size, 3), "uint8")
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        r = rng.uniform(0.15, 0.28)
        dy, dx = rows - cy, cols - cx
        if label == 0:
            mask = (abs(dy) < r) & (abs(dx) < r)
        elif label == 1:
            mask = dy**2 + dx**2 < r**2
        elif label == 2:
            mask = (dy < r) & (dy > -r) & (abs(dx) < (dy + r) / 2)
        else:
            mask = ((abs(dy) < r / 3) & (abs(dx) < r)) | ((abs(dx) < r / 3) & (abs(dy) < r))
        colour = COLOURS[label] + rng.normal(0, 15, 3)
        image = rng.normal(110, 35, (size, size, 3))
        image[mask] = colour + rng.normal(0, 10, (mask.sum(), 3))
        images[i] = np.clip(image, 0, 255).astype("uint8")
    return images, labels.astype("int32")


def compile_model(model, learning_rate: float):
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pvt_v2_b0", help="preset name, hf://, or path")
    parser.add_argument("--image-size", type=int, default=128, help="training resolution")
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs after unfreezing")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--output", help="save the fine-tuned model here (a preset)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)  # the new head's initial weights, dropout

    images, labels = shapes_dataset(args.samples, seed=args.seed)
    split = int(0.8 * len(images))
    train, validation = (images[:split], labels[:split]), (images[split:], labels[split:])

    # A new 4-class head on the pretrained backbone; predict()/fit() resize and normalise
    # raw uint8 images with the preset's preprocessor, here at a lower resolution.
    model = keras_pvt.PVTv2Classifier.from_preset(
        args.preset, num_classes=len(CLASSES), class_names=list(CLASSES)
    )
    model.preprocessor.image_size = (args.image_size, args.image_size)

    # 1. Train the new head on frozen features.
    model.backbone.trainable = False
    compile_model(model, args.learning_rate)
    model.fit(*train, validation_data=validation, batch_size=args.batch_size,
              epochs=args.head_epochs, verbose=2)
    _, accuracy = model.evaluate(*validation, batch_size=args.batch_size, verbose=0)
    print(f"validation (head only) accuracy: {accuracy:.1%}")

    # 2. Unfreeze and fine-tune everything with a lower learning rate. Changing `trainable`
    # needs a new compile().
    model.backbone.trainable = True
    compile_model(model, args.learning_rate / 10)
    model.fit(*train, validation_data=validation, batch_size=args.batch_size,
              epochs=args.epochs, verbose=2)
    _, accuracy = model.evaluate(*validation, batch_size=args.batch_size, verbose=0)
    print(f"validation (fine-tuned) accuracy: {accuracy:.1%}")

    logits = model.predict(validation[0][:1], verbose=0)
    index, label, probability = model.decode_predictions(logits, top=1)[0][0]
    print(f"first validation image: {label} ({probability:.1%}); truth: "
          f"{CLASSES[validation[1][0]]}")
    if args.output:
        model.save_to_preset(args.output)
        print(f"saved to {args.output}")


if __name__ == "__main__":
    main()
