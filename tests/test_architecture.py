"""The package's shape: no import cycle, files written by keras_pvt 0.1 still load, the
registry drives conversion and the CLI (family and task detected from the checkpoint)."""

import ast
import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_pvt
from keras_pvt.convert import FAMILIES
from tests.helpers.hub_cache import REPO_ROOT, offline_env, run

PACKAGE = REPO_ROOT / "keras_pvt"
LEGACY = REPO_ROOT / "tests" / "fixtures" / "legacy_0_1"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """A package's modules and the package modules each imports (every `import`
    statement, at any depth: function-level imports count)."""
    files = {_module_name(p, package.parent): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from a import b` imports the module a.b when there is one, else a.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and graph["keras_pvt.hub"]  # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_lazy_import_cycle(tmp_path):
    # A package whose only cycle goes through a function-level, relative import.
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(package)
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.sub.b"] == {"pkg.a"}
    cycle = find_cycle(graph)
    assert cycle in (["pkg.a", "pkg.sub.b", "pkg.a"], ["pkg.sub.b", "pkg.a", "pkg.sub.b"])
    (package / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None


def test_layers_import_nothing_above_them():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith(("keras_pvt.layers", "keras_pvt.kernels", "keras_pvt.checkpoints")):
            above = {e for e in edges if e.startswith(
                ("keras_pvt.models", "keras_pvt.tasks", "keras_pvt.explain",
                 "keras_pvt.convert", "keras_pvt.hub", "keras_pvt.cli"))}
            assert not above, f"{name} imports {above}"
        if name.startswith(("keras_pvt.models", "keras_pvt.tasks")):
            above = {e for e in edges if e.startswith(
                ("keras_pvt.explain", "keras_pvt.convert", "keras_pvt.hub", "keras_pvt.cli"))}
            assert not above, f"{name} imports {above}"
        if name.startswith("keras_pvt.explain"):  # works on any model it is given
            above = {e for e in edges if e.startswith(
                ("keras_pvt.models", "keras_pvt.tasks", "keras_pvt.convert", "keras_pvt.hub",
                 "keras_pvt.cli"))}
            assert not above, f"{name} imports {above}"


# --- Files written by keras_pvt 0.1 (tests/fixtures/legacy_0_1, made before the rework) ----


@pytest.fixture(scope="module")
def legacy_expected():
    return dict(np.load(LEGACY / "expected.npz"))


@pytest.mark.parametrize(
    "name, cls",
    [("pvt_v2", "PVTv2Classifier"), ("pvt_v2_linear", "PVTv2Backbone"),
     ("pvt", "PVTClassifier"), ("pvt_avg", "PVTClassifier"), ("cvt", "CvTClassifier"),
     ("cvt_avg", "CvTClassifier")],
)
def test_legacy_presets_and_keras_files_load(name, cls, legacy_expected):
    images = legacy_expected["images"]
    want = legacy_expected[name]
    model = getattr(keras_pvt, cls).from_preset(str(LEGACY / name))
    got = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    loaded = keras.saving.load_model(LEGACY / f"{name}.keras")
    assert type(loaded).__name__ == cls
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), want, atol=1e-5,
                               rtol=1e-5)


# --- The registry -----------------------------------------------------------------------------


def test_every_family_registers_its_tasks_and_presets():
    assert [f.name for f in FAMILIES] == ["pvt_v2", "pvt", "cvt"]
    for family in FAMILIES:
        assert [task.name for task in family.tasks] == ["classifier", "segmenter",
                                                        "depth_estimator"]
        for task in family.tasks:
            assert task.model_cls.backbone_cls is family.backbone_cls
        classifier = family.task("classifier")
        for layout in family.backbone_rows:
            assert layout in classifier.head_rows  # every source has the head's keys
        for preset in family.presets.values():
            assert family.task(preset.task).head_rows  # a head the conversion can read
            assert preset.license.url.startswith("https://github.com/")
    assert set(keras_pvt.CvTClassifier.presets) == set(FAMILIES[2].presets)
    # A task class lists the presets that hold its head; a backbone lists its family's.
    segmenters = set(keras_pvt.SegFormerSegmenter.presets)
    assert segmenters == {n for n in FAMILIES[0].presets if n.startswith("segformer_")}
    assert len(segmenters) == 12
    assert "mit_b0" in keras_pvt.PVTv2Classifier.presets
    assert not segmenters & set(keras_pvt.PVTv2Classifier.presets)
    assert set(keras_pvt.PVTv2Backbone.presets) == set(FAMILIES[0].presets)
    assert set(keras_pvt.GLPNDepthEstimator.presets) == {"glpn_nyu", "glpn_kitti"}
    assert not set(keras_pvt.GLPNDepthEstimator.presets) & segmenters


def test_cli_detects_the_family_of_a_local_preset(tmp_path):
    """`--preset ./dir` loads the directory's own family (0.1 fell back to PVT v2)."""
    script = Path(sys.executable).parent / "keras-pvt"
    env = offline_env(tmp_path / "hf", tmp_path / "keras")
    result = run([str(script), "predict", "--preset", str(LEGACY / "cvt"), "--top", "2",
                  "--json"], env)
    top = json.loads(result.stdout)[0]["top"]
    assert len(top) == 2 and {item["label"] for item in top} <= {"class_0", "class_1", "class_2"}
    # A transformers CvT checkpoint directory: its labels come from its config.json.
    from tests.helpers.reference_cvt import hf_cvt

    hf_cvt("small", num_labels=4).save_pretrained(tmp_path / "cvt")
    result = run([str(script), "predict", "--preset", str(tmp_path / "cvt"), "--json"], env)
    top = json.loads(result.stdout)[0]["top"]
    assert sorted(item["label"] for item in top) == [f"label_{i}" for i in range(4)]
    result = run([str(script), "predict", "--preset", str(LEGACY / "pvt_v2_linear")], env,
                 check=False)
    assert result.returncode == 2
    assert "holds a backbone, not a classifier" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_task_registers_from_its_own_module(tmp_path):
    """A new task declares its head keys once and conversion finds it by them: here a
    "projector" head (a Dense on pooled PVT v2 features) in a transformers checkpoint."""
    import dataclasses

    from safetensors.numpy import load_file, save_file

    from keras_pvt.convert import build_from_checkpoint, read_checkpoint, register_task
    from keras_pvt.convert.classification import classifier_task
    from tests.helpers.reference import hf_pvt_v2

    class Projector(keras_pvt.PVTv2Classifier):
        pass

    task = dataclasses.replace(
        classifier_task(Projector, keras_pvt.PVTv2ImageClassifierPreprocessor,
                        {"transformers": {"predictions": "projector"}}),
        name="projector",
    )
    hf_pvt_v2("tiny", num_labels=None).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    rng = np.random.default_rng(0)
    weights["projector.weight"] = rng.standard_normal((6, 32)).astype("float32")
    weights["projector.bias"] = rng.standard_normal(6).astype("float32")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})

    family = FAMILIES[0]
    register_task("pvt_v2", task)
    try:
        model, _ = build_from_checkpoint(read_checkpoint(tmp_path))
    finally:
        family.tasks.remove(task)
    assert type(model) is Projector and model.num_classes == 6
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.output_dense.kernel),
                                  weights["projector.weight"].T)
    with pytest.raises(ValueError, match="already has a 'classifier' task"):
        register_task("pvt_v2", family.task("classifier"))


def test_one_classifier_path_pools_any_backbone():
    """`PyramidImageClassifier`: token, avg or max pooling and the optional head LayerNorm,
    checked against the same head computed by hand from the backbone's outputs."""
    x = np.random.default_rng(1).standard_normal((2, 64, 96, 3)).astype("float32")
    backbone = keras_pvt.PVTBackbone(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                     num_heads=[1, 2, 3, 4], mlp_ratios=2,
                                     position_embedding_shape=64)
    features = keras.Model(backbone.input, [backbone.output, backbone.cls_token_output])
    feature_map, token = (keras.ops.convert_to_numpy(t) for t in features(x))
    for pooling, pooled in (("token", token), ("avg", feature_map.mean(axis=(1, 2))),
                            ("max", feature_map.max(axis=(1, 2)))):
        model = keras_pvt.PVTClassifier(backbone, num_classes=3, pooling=pooling)
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.output_dense.weights)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)),
                                   pooled @ kernel + bias, atol=1e-5)
    model = keras_pvt.PyramidImageClassifier(backbone, num_classes=3, pooling="avg",
                                             head_norm=True)
    normed = (feature_map - feature_map.mean(-1, keepdims=True)) / np.sqrt(
        feature_map.var(-1, keepdims=True) + backbone.layer_norm_epsilon)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.output_dense.weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)),
                               normed.mean(axis=(1, 2)) @ kernel + bias, atol=1e-4)
    assert keras_pvt.CvTClassifier.default_head_norm and model.get_config()["head_norm"]
