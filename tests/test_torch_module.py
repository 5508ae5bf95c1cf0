"""On PyTorch, keras_pvt models are `torch.nn.Module`s whose parameters are the Keras
variables (issue 18): torch optimizers, `state_dict()` and anything built on
`parameters()` work on them. The API is PyTorch's, so these tests exist on that backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_pvt
from tests.helpers.reference import hf_pvt_v2

BACKEND = keras.backend.backend()

if BACKEND == "torch":
    import torch

    @pytest.fixture(scope="module")
    def checkpoint(tmp_path_factory):
        path = tmp_path_factory.mktemp("tiny")
        hf_pvt_v2("tiny", num_labels=4).save_pretrained(path)
        return path

    def _by_path(model) -> dict:
        return {variable.path: variable for variable in model.weights}

    def test_parameters_are_the_variables_and_follow_trainable(checkpoint):
        model = keras_pvt.PVTv2Classifier.from_preset(str(checkpoint), num_classes=3)
        named = dict(model.named_parameters())
        variables = _by_path(model)
        assert len(named) == len(variables) == len(model.weights)
        for name, parameter in named.items():
            variable = variables[name.removeprefix("_torch_params.")]
            assert parameter is variable.value
            assert parameter.requires_grad == variable.trainable
        model.backbone.trainable = False
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert len(trainable) == 2  # the new head's kernel and bias
        model.backbone.enable_lora(2)
        lora = [n for n, p in model.named_parameters() if "lora" in n and p.requires_grad]
        assert len(lora) == 2 * len([layer for layer in model.backbone._flatten_layers()
                                     if getattr(layer, "lora_enabled", False)]) > 0

    def test_torch_optimizer_and_state_dict(checkpoint):
        model = keras_pvt.PVTv2Classifier.from_preset(str(checkpoint))
        images = torch.tensor(np.random.default_rng(0).normal(size=(2, 64, 64, 3)),
                              dtype=torch.float32)
        before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_weights]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(images).square().mean().backward()
        optimizer.step()
        after = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
        assert all(np.abs(a - b).max() > 0 for a, b in zip(after, before))  # every variable

        state = model.state_dict()
        assert len(state) == len(model.weights)
        fresh = keras_pvt.PVTv2Classifier.from_preset(str(checkpoint))
        fresh.load_state_dict(state)
        with torch.no_grad():
            np.testing.assert_array_equal(fresh(images).numpy(), model(images).numpy())
