"""Preset resolution: names, `hf://` handles and local checkpoints -> a keras-hub preset dir.

Named presets are downloaded from the Hugging Face Hub with `huggingface_hub` (so HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and tokens apply), converted once, and cached
under `$KERAS_HOME/keras_pvt/<name>/`. A cache entry is written to a temporary directory,
fingerprinted (sha256 of every file) and renamed into place, so an interrupted conversion
never leaves an entry that a later call trusts; concurrent callers wait on a file lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

from filelock import FileLock

from keras_pvt.checkpoints.io import CheckpointError
from keras_pvt.models import FAMILIES
from keras_pvt.models.family import Family, Preset

MANIFEST = "keras_pvt_manifest.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_OPTIONAL_FILES = ("preprocessor_config.json",)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PresetError(ValueError):
    """A preset that cannot be resolved (unknown name, offline, corrupted cache...)."""


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def cache_root() -> Path:
    """Where converted presets live: `$KERAS_HOME/keras_pvt`."""
    return keras_home() / "keras_pvt"


def all_presets() -> dict[str, tuple[Family, Preset]]:
    return {name: (family, p) for family in FAMILIES for name, p in family.presets.items()}


def presets_for(cls) -> dict[str, dict]:
    """Preset metadata for a backbone or task class (all families for base classes)."""
    backbone_cls = getattr(cls, "backbone_cls", None) or cls
    return {
        name: preset.metadata()
        for name, (family, preset) in all_presets().items()
        if issubclass(family.backbone_cls, backbone_cls)
    }


# --- Cache entries -------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory: Path, source: str) -> None:
    files = {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}
    (directory / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=2))


def verify_entry(directory: Path) -> str | None:
    """None if a cache entry is complete and intact, else what is wrong with it."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return "no manifest (incomplete write)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable manifest"
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its recorded checksum"
    return None


def cached_conversion(entry: Path, fetch, description: str) -> Path:
    """Returns the verified cache entry `entry`, converting `fetch()`'s checkpoint if needed.

    `fetch` returns the local checkpoint path (it may download). The conversion is written to
    a temporary sibling directory and renamed into place under a file lock.
    """
    from keras_pvt.convert import convert_to_preset

    entry.parent.mkdir(parents=True, exist_ok=True)
    if entry.is_dir() and verify_entry(entry) is None:
        return entry
    with FileLock(str(entry) + ".lock"):
        if entry.is_dir():
            problem = verify_entry(entry)
            if problem is None:
                return entry  # another process converted it while we waited
            warnings.warn(
                f"Cached preset {entry} is invalid ({problem}); rebuilding it.", stacklevel=4
            )
            shutil.rmtree(entry)
        source = fetch()
        staging = entry.parent / f".{entry.name}.tmp-{uuid.uuid4().hex}"
        try:
            convert_to_preset(source, staging)
            _write_manifest(staging, description)
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return entry


# --- Hugging Face Hub -----------------------------------------------------------------------


def _offline_error(repo_id: str, handle: str, cause: Exception) -> PresetError:
    return PresetError(
        f"Could not get {handle!r}: it needs the Hugging Face Hub repository {repo_id!r}, "
        "which is not in the local Hugging Face cache, and the Hub cannot be reached "
        f"(offline, HF_HUB_OFFLINE=1, or no network: {type(cause).__name__}).\n"
        f"Download it once with network access, e.g. `hf download {repo_id} --local-dir "
        f"./{repo_id.split('/')[-1]}`, then pass that directory to from_preset: "
        f"from_preset('./{repo_id.split('/')[-1]}')."
    )


def download_checkpoint(repo_id: str, handle: str | None = None) -> Path:
    """Downloads (or finds in the HF cache) a repo's config and weights; returns its folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    handle = handle or f"hf://{repo_id}"
    try:
        config = Path(hf_hub_download(repo_id, "config.json"))
    except LocalEntryNotFoundError as error:
        raise _offline_error(repo_id, handle, error) from error
    except Exception as error:
        if "offline" in str(error).lower() or "connect" in type(error).__name__.lower():
            raise _offline_error(repo_id, handle, error) from error
        raise PresetError(f"Could not download {repo_id}/config.json: {error}") from error
    for name in _OPTIONAL_FILES:
        with contextlib.suppress(Exception):
            hf_hub_download(repo_id, name)
    last_error = None
    for name in _WEIGHT_FILES:
        try:
            hf_hub_download(repo_id, name)
            return config.parent
        except EntryNotFoundError as error:
            last_error = error
    if isinstance(last_error, LocalEntryNotFoundError):
        raise _offline_error(repo_id, handle, last_error) from last_error
    raise PresetError(f"{repo_id} has none of the weight files {', '.join(_WEIGHT_FILES)}.")


def _is_keras_preset(directory: Path) -> bool:
    config = directory / "config.json"
    if not config.is_file():
        return False
    try:
        return "registered_name" in json.loads(config.read_text())
    except ValueError:
        return False


# --- Resolution ------------------------------------------------------------------------------


@contextlib.contextmanager
def resolve(handle: str, cls=None):
    """Yields a keras-hub preset (local directory or handle) for any keras_pvt handle."""
    handle = os.fspath(handle)
    presets = all_presets()
    if handle in presets:
        family, preset = presets[handle]
        entry = cache_root() / handle
        yield str(cached_conversion(
            entry, lambda: download_checkpoint(preset.hf_repo, handle), preset.hf_repo
        ))
        return
    if handle.startswith("hf://"):
        repo_id = handle[len("hf://"):].strip("/")
        if not _REPO_ID.match(repo_id) or ".." in repo_id:
            raise PresetError(f"{handle!r} is not a valid Hugging Face repository handle.")
        folder = download_checkpoint(repo_id, handle)
        if _is_keras_preset(folder):
            yield handle
            return
        entry = cache_root() / "hf" / repo_id.replace("/", "--") / folder.name
        yield str(cached_conversion(entry, lambda: folder, handle))
        return
    path = Path(handle).expanduser()
    if path.is_dir() and _is_keras_preset(path):
        yield str(path)
        return
    if path.exists():
        with tempfile.TemporaryDirectory(prefix="keras_pvt_") as tmp:
            from keras_pvt.convert import convert_to_preset

            yield str(convert_to_preset(path, Path(tmp) / "preset"))
        return
    if "://" in handle:
        yield handle  # kaggle://, modelscope://: keras-hub's own handles
        return
    names = sorted(presets_for(cls) if cls is not None else presets)
    raise PresetError(
        f"Unknown preset {handle!r}: not a keras_pvt preset name, an hf:// handle or an "
        f"existing path. Available presets: {', '.join(names)}."
    )


__all__ = ["CheckpointError", "PresetError", "cache_root", "presets_for", "resolve"]
