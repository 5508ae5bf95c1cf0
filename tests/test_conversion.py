"""The conversion script converts a checkpoint and asserts parity (offline, random weights)."""

import json
import sys

from tests.helpers.hub_cache import offline_env, run
from tests.helpers.reference import hf_pvt_v2


def test_convert_pvt_v2_script(tmp_path):
    checkpoint = tmp_path / "pvt_v2_b0"
    hf_pvt_v2("b0", num_labels=1000).save_pretrained(checkpoint)
    env = offline_env(tmp_path / "hf", tmp_path / "keras")
    result = run(
        [sys.executable, "conversion/convert_pvt_v2.py", "--presets", "pvt_v2_b0",
         "--source", str(checkpoint), "--output-dir", str(tmp_path / "out")],
        env,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["preset"] == "pvt_v2_b0"
    assert figures["max_abs_logit_delta"] < 1e-4
    assert figures["params"] == 3_666_760
    assert (tmp_path / "out" / "pvt_v2_b0" / "task.json").is_file()

    # A tolerance the conversion cannot meet makes the script fail loudly.
    result = run(
        [sys.executable, "conversion/convert_pvt_v2.py", "--presets", "pvt_v2_b0",
         "--source", str(checkpoint), "--output-dir", str(tmp_path / "out2"),
         "--tolerance", "0"],
        env, check=False,
    )
    assert result.returncode != 0 and "exceeds" in result.stderr
