"""examples/explain.py run as a user would (a subprocess on the current backend): the small
model learns the shapes' classes, and attention rollout and Grad-CAM on its second stage put
more of their mass on the deciding shape than an even spread, or than on the distractor."""

import re
import sys

from PIL import Image

from tests.helpers.hub_cache import offline_env, run

# Reduced settings: 480 training images, 8 epochs, 32 held-out images explained.
SAMPLES, EPOCHS, EXPLAINED = 600, 8, 32


def test_explain_example(tmp_path, record_delta):
    env = offline_env(tmp_path / "hf", tmp_path / "keras")
    env.setdefault("OMP_NUM_THREADS", "1")  # see test_segment_example.py
    picture = tmp_path / "explain.png"
    result = run([sys.executable, "examples/explain.py", "--samples", str(SAMPLES),
                  "--epochs", str(EPOCHS), "--explained", str(EXPLAINED),
                  "--picture", str(picture)], env)
    out = result.stdout
    accuracy = float(re.search(r"held-out accuracy: ([\d.]+)%", out).group(1)) / 100
    even = float(re.search(r"an even spread puts ([\d.]+) in the first", out).group(1))
    shares = {name: (float(deciding), float(distractor)) for name, deciding, distractor
              in re.findall(r"^  (.+): ([\d.]+) / ([\d.]+)$", out, re.MULTILINE)}
    assert set(shares) == {"rollout", "Grad-CAM stage 2", "Grad-CAM stage 4"}, out
    record_delta("examples/explain.py held-out accuracy (reduced settings)", accuracy)
    for name, (deciding, _) in shares.items():
        record_delta(f"examples/explain.py {name} mass in the deciding box", deciding)
    # Four classes: chance is 0.25; measured 0.98 (PyTorch).
    assert accuracy > 0.8, out
    # Measured deciding-box shares against an even spread of 0.07: rollout 0.30 / 0.24 /
    # 0.22 (PyTorch / TensorFlow / JAX), Grad-CAM stage 2 0.24 / 0.13 / 0.11.
    for name in ("rollout", "Grad-CAM stage 2"):
        deciding, distractor = shares[name]
        assert deciding > 1.2 * even and deciding > distractor, (name, out)
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size == (6 * 64 * 3, 3 * (64 * 3 + 14))
