"""Preset resolution: names, `hf://` handles and local checkpoints -> a keras-hub preset dir.

Named presets are downloaded from the Hugging Face Hub with `huggingface_hub` (so HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and tokens apply), converted once, and cached
under `$KERAS_HOME/keras_pvt/<name>/` (`hf://owner/repo[@revision]` handles under
`hf/owner--repo/<commit>/`). A cache entry is written to a temporary directory,
fingerprinted (sha256 of every file, checked on every load) and renamed into place, so an
interrupted conversion never leaves an entry that a later call trusts; concurrent callers
wait on a file lock (an OS lock, released when its holder dies), and the next holder
removes staging directories left by killed conversions. Handles are validated before any
path is built from them, so none can point outside the cache.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

import keras
import keras_hub
from filelock import FileLock, Timeout

from keras_pvt.catalog import MANIFEST, cache_root, keras_home  # noqa: F401 (public here too)
from keras_pvt.checkpoints.io import CheckpointError
from keras_pvt.convert import (
    FAMILIES,
    all_presets,
    check_family,
    convert_to_preset,
    detect_task,
    identify,
    read_checkpoint,
)
from keras_pvt.models import base
from keras_pvt.models.base import PresetError

# Hub naming rules (ASCII letters, digits, `_.-`, no `--` or `..`, at most 96 characters),
# checked before a handle becomes part of a path.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
_HF_HANDLE = re.compile(
    rf"hf://(?P<repo>{_REPO_PART}/{_REPO_PART})"
    r"(?:@(?P<revision>[A-Za-z0-9_.-]{1,100}(?:/[A-Za-z0-9_.-]{1,100}){0,3}))?"
)
_COMMIT = re.compile(r"[0-9a-f]{40}")
LOCK_TIMEOUT_S = float(os.environ.get("KERAS_PVT_LOCK_TIMEOUT", 1800))
_OPTIONAL_FILES = ("preprocessor_config.json",)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def presets_for(cls) -> dict[str, dict]:
    """Preset metadata for a class: a backbone's family's presets, a task's presets that
    hold its head (all families for generic classes)."""
    if not issubclass(cls, keras_hub.models.Task):
        return {name: preset.metadata() for name, (family, preset) in all_presets().items()
                if issubclass(family.backbone_cls, cls)}
    backbone_cls = getattr(cls, "backbone_cls", None) or keras_hub.models.Backbone
    return {
        name: preset.metadata()
        for name, (family, preset) in all_presets().items()
        if issubclass(family.backbone_cls, backbone_cls)
        and issubclass(family.task(preset.task).model_cls, cls)
    }


# --- Cache entries -------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory: Path, source: str, license: str | None = None) -> None:
    files = {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}
    manifest = {"source": source, **({"license": license} if license else {}), "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def verify_entry(directory: Path) -> str | None:
    """None if a cache entry is complete and intact, else what is wrong with it."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return "no manifest (incomplete write)"
    try:
        files = json.loads(manifest.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, OSError):
        return "unreadable manifest"
    present = {p.name for p in directory.iterdir()} - {MANIFEST}
    if present - set(files):
        return f"unexpected files {sorted(present - set(files))}"
    for name, digest in files.items():
        path = directory / name
        if Path(name).name != name or not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its recorded checksum"
    return None


def _remove_tree(directory: Path) -> None:
    """Renames, then deletes, so that a crash midway leaves no half-deleted entry in place."""
    trash = directory.parent / f".{directory.name}.tmp-trash-{uuid.uuid4().hex}"
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_staging(entry: Path) -> None:
    # Only the lock holder writes staging directories for `entry`: any left are from a
    # conversion that was killed.
    for stale in entry.parent.glob(f".{entry.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def cached_conversion(entry: Path, fetch, description: str, license: str | None = None) -> Path:
    """Returns the verified cache entry `entry`, converting `fetch()`'s checkpoint if needed.

    `fetch` returns the local checkpoint path (it may download). The conversion is written to
    a temporary sibling directory and renamed into place under a file lock; its manifest
    records the source and, for named presets, the weights' licence.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    if entry.is_dir() and verify_entry(entry) is None:
        return entry
    lock_path = str(entry) + ".lock"
    try:
        lock = FileLock(lock_path, timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except Timeout as error:
        raise PresetError(
            f"Timed out after {LOCK_TIMEOUT_S:.0f} s waiting for {lock_path}: another process "
            f"is converting {description} into {entry}. If no such process is running, "
            "delete the lock file."
        ) from error
    try:
        _remove_stale_staging(entry)
        problem = None
        if entry.exists():
            problem = verify_entry(entry) if entry.is_dir() else "not a directory"
            if problem is None:
                return entry  # another process converted it while we waited
            warnings.warn(
                f"Cached preset {entry} is invalid ({problem}); rebuilding it.", stacklevel=4
            )
            if entry.is_dir():
                _remove_tree(entry)
            else:
                entry.unlink()
        try:
            source = fetch()
        except PresetError as error:
            if problem is None:
                raise
            raise PresetError(
                f"Cached preset {entry} was invalid ({problem}) and was removed; it could not "
                f"be rebuilt: {error}"
            ) from error
        origin = description if "://" in description else f"hf://{description}"
        # The one line a first load prints (a download shows huggingface_hub's own bars).
        print(f"keras_pvt: converting {origin} to a keras-hub preset in {entry} (once; later "
              "loads read it from there)", file=sys.stderr, flush=True)
        staging = entry.parent / f".{entry.name}.tmp-{uuid.uuid4().hex}"
        try:
            convert_to_preset(source, staging)
            _write_manifest(staging, description, license)
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        lock.release()
    return entry


# --- Hugging Face Hub -----------------------------------------------------------------------


# Who is loading: the CLI sets "cli", so that messages name its flags, not Python calls.
CALLER = "python"


def _offline_error(repo_id: str, handle: str, cause: Exception) -> PresetError:
    folder = repo_id.split("/")[-1]
    use = (f"--preset ./{folder}" if CALLER == "cli" else f"from_preset('./{folder}')")
    name = handle if "://" not in handle else f"'{handle}'"
    return PresetError(
        f"Could not get {handle!r}: it needs the Hugging Face Hub repository {repo_id!r}, "
        "which is not in the local Hugging Face cache, and the Hub cannot be reached "
        f"(offline, HF_HUB_OFFLINE=1, or no network: {type(cause).__name__}). "
        f"On a machine with network access, `hf download {repo_id}` fills the Hugging Face "
        f"cache (then {name} works offline), or `hf download {repo_id} --local-dir "
        f"./{folder}` makes a folder to load with {use}."
    )


def _cached_checkpoint(repo_id: str, revision: str | None) -> Path | None:
    """The repo's snapshot folder if the Hugging Face cache already holds its config and
    weights (no network is touched, so a filled cache works offline without retries)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(config, str):
        return None
    if not any(isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str)
               for name in _WEIGHT_FILES):
        return None
    return Path(config).parent


def _check_hub_reachable(repo_id: str, handle: str) -> None:
    """One request without retries, so that no network fails in seconds (huggingface_hub
    retries a refused connection five times, over half a minute)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return  # huggingface_hub fails at once
    try:
        get_session().head(f"{constants.ENDPOINT}/api/models/{repo_id}", timeout=5)
    except Exception as error:  # httpx's or requests' connection and timeout errors
        if "connect" in type(error).__name__.lower() or "timeout" in type(error).__name__.lower():
            raise _offline_error(repo_id, handle, error) from error


def download_checkpoint(repo_id: str, handle: str | None = None, revision: str | None = None
                        ) -> Path:
    """Finds in the HF cache, or else downloads, a repo's config and weights; returns its
    folder."""
    cached = _cached_checkpoint(repo_id, revision)
    if cached is not None:
        return cached
    from functools import partial

    from huggingface_hub import hf_hub_download as download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    hf_hub_download = partial(download, revision=revision)
    handle = handle or f"hf://{repo_id}"
    _check_hub_reachable(repo_id, handle)
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

_WARNED_LICENSES: set[str] = set()


def warn_license(name: str, preset) -> None:
    """Warns once per process per licence when a preset's weights may not be used
    commercially."""
    license = preset.license
    if license.commercial or license.name in _WARNED_LICENSES:
        return
    _WARNED_LICENSES.add(license.name)
    warnings.warn(
        f"{name}: the weights of {preset.hf_repo} are under the {license.name}, for "
        f"non-commercial use only (research or evaluation): {license.url}",
        UserWarning, stacklevel=5,  # the caller of from_preset
    )



def parse_hf_handle(handle: str) -> tuple[str, str | None]:
    """`(repo_id, revision)` of `hf://owner/repo[@revision]`; `PresetError` for anything
    that is not a valid Hub repository id (so no handle can name a path outside the cache)."""
    match = _HF_HANDLE.fullmatch(handle)
    if match is None or ".." in handle or "--" in match.group("repo"):
        raise PresetError(
            f"{handle!r} is not a valid Hugging Face handle: expected hf://owner/repo or "
            "hf://owner/repo@revision, with names of letters, digits, '_', '.' and '-' "
            "(no '..', no '--' in the repository id, no leading '/', no other path parts)."
        )
    return match.group("repo"), match.group("revision")


@contextlib.contextmanager
def resolve(handle: str, cls=None):
    """Yields a keras-hub preset (local directory or handle) for any keras_pvt handle."""
    handle = os.fspath(handle)
    presets = all_presets()
    if handle in presets:
        family, preset = presets[handle]
        check_family(family, cls, f"Preset {handle!r}")
        warn_license(handle, preset)
        entry = cache_root() / handle
        yield str(cached_conversion(
            entry, lambda: download_checkpoint(preset.hf_repo, handle), preset.hf_repo,
            license=preset.license.describe(),
        ))
        return
    if handle.startswith("hf://"):
        repo_id, revision = parse_hf_handle(handle)
        known = [(n, p) for n, (_, p) in presets.items() if p.hf_repo == repo_id]
        if known:
            warn_license(*known[0])
        folder = download_checkpoint(repo_id, handle, revision)
        if _is_keras_preset(folder):
            if revision is None:
                yield f"hf://{repo_id}"
            else:  # keras-hub's handles take no revision: pass the pinned snapshot
                from huggingface_hub import snapshot_download

                yield snapshot_download(repo_id, revision=revision)
            return
        if not _COMMIT.fullmatch(folder.name):
            raise PresetError(
                f"{handle!r}: unexpected Hugging Face cache folder {folder} (not a commit)."
            )
        entry = cache_root() / "hf" / repo_id.replace("/", "--") / folder.name
        # (a checkpoint of another family is cached as converted; keras-hub then refuses
        # to load it into `cls`, naming both classes)
        yield str(cached_conversion(entry, lambda: folder, handle))
        return
    path = Path(handle).expanduser()
    if path.is_dir() and _is_keras_preset(path):
        yield str(path)
        return
    if path.exists():
        with tempfile.TemporaryDirectory(prefix="keras_pvt_") as tmp:
            yield str(convert_to_preset(path, Path(tmp) / "preset", cls))
        return
    if "://" in handle:
        yield handle  # kaggle://, modelscope://: keras-hub's own handles
        return
    raise _unknown_preset(handle, cls)


def _unknown_preset(handle: str, cls=None) -> PresetError:
    names = sorted(presets_for(cls) if cls is not None else all_presets())
    hint = ""
    near = difflib.get_close_matches(handle.lower().replace("-", "_"), names, n=3, cutoff=0.75)
    if near:
        hint = f" Did you mean {' or '.join(near)}?"
    elif handle.count("/") == 1 and not handle.startswith((".", "/", "~")):
        hint = f" A Hugging Face repository is written hf://{handle}."
    return PresetError(
        f"Unknown preset {handle!r}: not a keras_pvt preset name, an hf:// handle or an "
        f"existing path.{hint} Available presets: {', '.join(names)}."
    )


def task_class(handle: str, task: str | tuple[str, ...] = "classifier") -> type:
    """The keras_pvt class that loads `handle` as `task` (e.g. the family's classifier).

    The family and task come from the preset name, from the class a keras-hub preset was
    saved with, or from a checkpoint's own keys (directory, file or `hf://` repository).
    `task` may name several tasks (`("classifier", "segmenter")`): any of them will do.
    Raises `PresetError` if the handle holds no such head (e.g. a bare backbone).
    """
    handle = os.fspath(handle)
    tasks = (task,) if isinstance(task, str) else tuple(task)
    wanted = " or ".join(_words(t) for t in tasks)
    presets = all_presets()
    if handle in presets:
        family, preset = presets[handle]
        found = next((t for t in family.tasks if t.name == preset.task), None)
        if preset.task not in tasks or found is None:
            what = "a bare backbone" if preset.task == "backbone" else f"a {_words(preset.task)}"
            others = sorted(name for name, (_, p) in presets.items() if p.task in tasks)
            hint = f" {wanted.capitalize()} presets: {', '.join(others)}." if others else ""
            raise PresetError(
                f"{handle}: is {what} preset, not a {wanted} with its head.{hint}")
        return found.model_cls
    if handle.startswith("hf://"):
        repo_id, revision = parse_hf_handle(handle)
        path = download_checkpoint(repo_id, handle, revision)
    else:
        path = Path(handle).expanduser()
        if not path.exists():
            raise _unknown_preset(handle)
    if path.is_dir() and _is_keras_preset(path):
        saved = path / "task.json"
        found = None
        if saved.is_file():
            name = json.loads(saved.read_text()).get("registered_name", "")
            found = keras.saving.get_registered_object(name)
        task_classes = tuple(t.model_cls for f in FAMILIES for t in f.tasks if t.name in tasks)
        if found is not None and issubclass(found, task_classes):
            return found
        what = found.__name__ if found is not None else "a backbone"
        raise PresetError(f"{handle}: holds {what}, not a {wanted} with its head.")
    family, layout, state_dict = identify(read_checkpoint(path))
    detected = detect_task(family, layout, state_dict)
    if detected is None or detected.name not in tasks:
        what = f"a {_words(detected.name)}" if detected is not None else "a bare backbone"
        raise PresetError(
            f"{handle}: is {what} checkpoint of the {family.name} family, not a "
            f"{wanted} with its head."
        )
    return detected.model_cls


def _words(task: str) -> str:
    return task.replace("_", " ")  # "depth_estimator" -> "depth estimator"


base.set_preset_resolver(sys.modules[__name__])

__all__ = [
    "CheckpointError",
    "PresetError",
    "cache_root",
    "parse_hf_handle",
    "presets_for",
    "resolve",
]
