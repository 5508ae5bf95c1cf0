"""Every code example in a public docstring and in README runs in the suite: here, on named
presets from an offline Hugging Face cache of tiny random checkpoints, or in the test named
below (README's segmentation, depth and explain sections run with their tasks' tests)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import textwrap

import keras_pvt
from keras_pvt.cli import sample_image_path
from tests.helpers.hub_cache import REPO_ROOT, offline_env, place_in_hf_cache, run
from tests.helpers.reference import hf_pvt_v2, hf_segformer
from tests.helpers.reference_cvt import hf_cvt
from tests.helpers.reference_pvt import hf_pvt

EXAMPLE = re.compile(r"```python\n(.*?)```", re.S)

# Examples that need a trained model or a prepared scene run where those are made.
ELSEWHERE = {
    "keras_pvt.explain.attention_rollout": "tests/test_explain.py",
    "keras_pvt.explain.grad_cam": "tests/test_explain.py",
    "keras_pvt.models.base.PyramidBackbone.attention_maps": "tests/test_explain.py",
    "keras_pvt.tasks.glpn.GLPNDepthEstimator": "tests/test_glpn_parity.py",
}
# The rest run here, in this order; the names they use come from PREAMBLE.
HERE = [
    "keras_pvt.models.pvt_v2.backbone.PVTv2Backbone",
    "keras_pvt.models.pvt.backbone.PVTBackbone",
    "keras_pvt.models.cvt.backbone.CvTBackbone",
    "keras_pvt.tasks.segformer.SegFormerSegmenter",
]
PREAMBLE = """
import keras, numpy as np, keras_pvt
images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
image_a = np.zeros((70, 90, 3), "uint8")
image_b = np.full((41, 33, 3), 200, "uint8")
"""
CHECKS = {  # printed after each example: what its comment claims
    "PVTv2Backbone": "print('pvt_v2', [tuple(f.shape) for f in features.values()])",
    "PVTBackbone": "print('pvt', [tuple(f.shape) for f in features.values()], "
                   "tuple(embedding.shape))",
    "CvTBackbone": "print('cvt', [tuple(f.shape) for f in features.values()], "
                   "tuple(cls_features.shape))",
    "SegFormerSegmenter": "print('segformer', [m.shape for m in masks])",
}


def docstring_examples() -> dict[str, str]:
    """Qualified name -> the code of each ```python block in a public docstring."""
    found = {}
    for info in pkgutil.walk_packages(keras_pvt.__path__, "keras_pvt."):
        module = importlib.import_module(info.name)
        objects = [(info.name, module)]
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != info.name:
                continue
            objects.append((f"{info.name}.{name}", value))
            if inspect.isclass(value):
                objects += [(f"{info.name}.{name}.{attr}", getattr(member, "__func__", member))
                            for attr, member in vars(value).items()
                            if not attr.startswith("_") and (
                                inspect.isfunction(member)
                                or isinstance(member, (classmethod, staticmethod)))]
        for qualname, value in objects:
            blocks = EXAMPLE.findall(inspect.getdoc(value) or "") if value.__doc__ else []
            if blocks:
                found[qualname] = "\n".join(textwrap.dedent(b) for b in blocks)
    return found


def readme_examples() -> dict[str, str]:
    """README section title -> its ```python block (a section's second block is
    "Title #2", and so on: none is dropped)."""
    sections = (REPO_ROOT / "README.md").read_text().split("\n## ")[1:]
    return {section.split("\n", 1)[0] + (f" #{i + 1}" if i else ""): block
            for section in sections for i, block in enumerate(EXAMPLE.findall(section))}


README_ELSEWHERE = {"Segmentation": "tests/test_segformer_parity.py",
                    "Depth": "tests/test_glpn_parity.py", "Explain": "tests/test_explain.py"}
README_HERE = ["Usage", "Fine-tuning"]
README_PREAMBLE = """
import shutil
shutil.copy({sample!r}, "cat.jpg")
names = ["circle", "square", "triangle", "star"]
images = np.random.default_rng(1).integers(0, 256, (8, 48, 48, 3)).astype("uint8")
labels = np.arange(8) % 4
"""


def test_every_example_is_run_somewhere():
    assert set(docstring_examples()) == set(ELSEWHERE) | set(HERE)
    assert set(readme_examples()) == set(README_ELSEWHERE) | set(README_HERE)


def test_docstring_examples_run_on_named_presets(tmp_path):
    hf_cache = tmp_path / "hf"
    for repo_id, reference in [
        ("OpenGVLab/pvt_v2_b0", hf_pvt_v2("tiny", num_labels=3)),
        ("Zetatech/pvt-tiny-224", hf_pvt("small", num_labels=3)),
        ("microsoft/cvt-13", hf_cvt("small", num_labels=3)),
        ("nvidia/segformer-b0-finetuned-ade-512-512", hf_segformer("tiny", num_labels=5)),
        ("OpenGVLab/pvt_v2_b2", hf_pvt_v2("tiny", num_labels=3, seed=2)),
    ]:
        reference.save_pretrained(tmp_path / repo_id)
        place_in_hf_cache(hf_cache, repo_id, tmp_path / repo_id)
    examples, readme = docstring_examples(), readme_examples()
    code = PREAMBLE + "\n".join(
        examples[name] + "\n" + CHECKS[name.rsplit(".", 1)[1]] for name in HERE)
    code += README_PREAMBLE.format(sample=str(sample_image_path()))
    code += "\n".join(readme[name] for name in README_HERE)
    code += "\nprint('features', [tuple(f.shape) for f in features.values()])\n"
    code += "print('tuned', keras_pvt.PVTv2Classifier.from_preset('./my_pvt').class_names)\n"
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run([sys.executable, "-c", code], offline_env(hf_cache, tmp_path / "keras"),
                 cwd=workdir)
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines()
                 if line.split(" ", 1)[0] in ("pvt_v2", "pvt", "cvt", "segformer", "features",
                                              "tuned"))
    # Four pyramid levels at strides 4..32 of the 64x64 images; CvT's three at 4, 8, 16.
    assert lines["pvt_v2"] == "[(2, 16, 16, 8), (2, 8, 8, 16), (2, 4, 4, 24), (2, 2, 2, 32)]"
    assert lines["pvt"].startswith("[(2, 16, 16, 8), (2, 8, 8, 16), (2, 4, 4, 40), "
                                   "(2, 2, 2, 64)]") and lines["pvt"].endswith("(2, 64)")
    assert lines["cvt"] == "[(2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 48)] (2, 48)"
    assert lines["segformer"] == "[(70, 90), (41, 33)]"  # class ids at each image's size
    # README's usage: the top 5 of 3 classes, then the b2 backbone's pyramid on 512x384.
    top = [line for line in result.stdout.splitlines() if line.startswith("[(")][0]
    assert top.count("label_") == 3, result.stdout
    assert lines["features"] == "[(1, 128, 96, 8), (1, 64, 48, 16), (1, 32, 24, 24), " \
                                "(1, 16, 12, 32)]"
    assert lines["tuned"] == str(["circle", "square", "triangle", "star"])
