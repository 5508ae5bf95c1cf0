"""A temporary huggingface_hub cache holding random-weight checkpoints under real repo ids."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def place_in_hf_cache(cache: Path, repo_id: str, checkpoint_dir: Path, commit: str = "a" * 40):
    """Lays out `checkpoint_dir`'s files as huggingface_hub's cache does for `repo_id`."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in checkpoint_dir.iterdir():
        shutil.copy(file, snapshot / file.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def offline_env(hf_cache: Path, keras_home: Path) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(hf_cache),
        HF_HOME=str(hf_cache.parent / "hf_home"),
        KERAS_HOME=str(keras_home),
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return env


def run(args: list[str], env: dict, check: bool = True, cwd: Path = REPO_ROOT
        ) -> subprocess.CompletedProcess:
    """Runs a command (a fresh process reads HF_* at import) with the current backend."""
    result = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}"
        )
    return result


def python(code: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", code], env, check)
