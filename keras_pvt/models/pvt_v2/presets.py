"""Built-in PVT v2 presets: the official checkpoints on the Hugging Face Hub."""

from keras_pvt.models.family import Preset

_PAPER = "PVT v2 (Wang et al. 2022), ImageNet-1k, 224x224"

PVT_V2_PRESETS = {
    "pvt_v2_b0": Preset("OpenGVLab/pvt_v2_b0", f"PVT v2 b0, 3.7M parameters. {_PAPER}.", 3_666_760),
    "pvt_v2_b1": Preset("OpenGVLab/pvt_v2_b1", f"PVT v2 b1, 14.0M parameters. {_PAPER}.", 14_009_000),
    "pvt_v2_b2": Preset("OpenGVLab/pvt_v2_b2", f"PVT v2 b2, 25.4M parameters. {_PAPER}.", 25_362_856),
    "pvt_v2_b2_linear": Preset(
        "OpenGVLab/pvt_v2_b2_linear",
        f"PVT v2 b2 with linear SRA (7x7 pooling), 22.6M parameters. {_PAPER}.",
        22_553_512,
    ),
    "pvt_v2_b3": Preset("OpenGVLab/pvt_v2_b3", f"PVT v2 b3, 45.2M parameters. {_PAPER}.", 45_238_696),
    "pvt_v2_b4": Preset("OpenGVLab/pvt_v2_b4", f"PVT v2 b4, 62.6M parameters. {_PAPER}.", 62_556_072),
    "pvt_v2_b5": Preset("OpenGVLab/pvt_v2_b5", f"PVT v2 b5, 82.0M parameters. {_PAPER}.", 81_956_008),
}
