"""The provenance manifest: `atlas_manifest.json` at the atlas root.

It says, for every release artifact present, what it is (name, size, sha256) and
how it was made (the stage and that stage's parameters, read from the stage stamps
under `raw/.stamps/`), and for the build as a whole: the preset, the model (Hub id
and revision, or a local folder with the sha256 of its weights and tokenizer), the
versions of the packages that shape the numbers, and the git commit of the code.

Two builds of the same preset give byte-identical manifests: keys are sorted, there
are no timestamps, no absolute paths and no "dirty tree" flag — nothing that differs
between two identical builds made in different folders or at different times.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

from builder_utils import layout
from builder_utils.pipeline import sha256_file  # the stamps' checksum, so manifest and stamps agree

MANIFEST_FORMAT = 1
# The packages whose versions can change an artifact's bytes.
PACKAGES = ("datasets", "h5py", "numpy", "pandas", "pyarrow", "safetensors", "scipy", "tokenizers", "torch",
            "transformers")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")     # first pattern that matches is the weights
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "vocab.txt")
STAMPS_DIR = layout.STAMPS_DIR
# Build outputs outside `layout.release_file_names()` that still belong to the record: the 11A filter's
# statistics, and the 5A activations that token_checker_masks.h5 is thresholded from.
EXTRA_ARTIFACTS = (layout.OBJECT_PROMPT_STATS, layout.TOKEN_CHECKER_ACTIVATIONS)


def artifact_names() -> list[str]:
    """Every file name the manifest describes when present."""
    return layout.release_file_names(include_activations=True) + list(EXTRA_ARTIFACTS)


# ----------------------------------------------------------------------------- stage stamps


def read_stamps(raw_dir: Path) -> dict[str, dict]:
    """`{output file name: {"stage", "params", "inputs"}}` from the stamps the pipeline left."""
    by_output: dict[str, dict] = {}
    stamps = Path(raw_dir) / STAMPS_DIR
    for path in sorted(stamps.glob("*.json")) if stamps.is_dir() else []:
        try:
            stamp = json.loads(path.read_text())
            fp = stamp["fingerprint"]
            for name in stamp["outputs"]:
                by_output[name] = {"stage": stamp["stage"], "params": fp.get("params", {}),
                                   "inputs": fp.get("inputs", {})}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise layout.AtlasFileError(path, f"unreadable stage stamp: {exc}") from None
    return by_output


def _stage_from_name(name: str) -> str:
    """The stage a release file comes from, for files without a stamp (e.g. a fixture atlas)."""
    if name.startswith("11A_"):
        return "11A_object_prompts"
    if name == layout.CHECKER_PROMPTS:
        return "11B_checker_prompts"
    if name == layout.TOKEN_CHECKER_PROMPTS:
        return "5A_checker_prompts"
    if name.startswith("12_"):
        return Path(name).stem
    if name.startswith("13_object_masks"):
        return "13_object_masks"
    if name.startswith("13_checker_masks"):
        return "13_checker_masks"
    if name == layout.TOKEN_CHECKER_MASKS:
        return "5A_token_checker_masks"
    if name.startswith("14_"):
        return "14_decomposition"
    if name.startswith("relaxed_modularity"):
        return "relaxed_modularity"
    return "token_independence"


_SETTING_IN_NAME = re.compile(r"_(eps[0-9.]+_cons[0-9.]+)\.(h5|csv)$")


def _artifact_params(name: str, stamp: dict | None) -> dict:
    params = dict(stamp["params"]) if stamp else {}
    m = _SETTING_IN_NAME.search(name)
    if m:   # the one (ε, C) this file holds, besides the stage's whole grid
        params["epsilon"], params["consistency"] = layout.parse_setting_tag(m[1])
    return params


# ----------------------------------------------------------------------------- the build record


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def code_commit(repo: Path | None = None) -> str:
    """The git commit of this code, or "unknown" outside a git checkout."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        res = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = res.stdout.strip()
    return commit if res.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else "unknown"


def _hash_files(paths: list[Path]) -> str | None:
    """One sha256 over several files: each file's name and digest, in name order."""
    if not paths:
        return None
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _folder_hashes(folder: Path) -> dict:
    weights: list[Path] = []
    for pattern in WEIGHT_PATTERNS:
        weights = sorted(folder.glob(pattern))
        if weights:
            break
    tokenizer = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    return {"weights_files": [p.name for p in weights], "weights_sha256": _hash_files(weights),
            "tokenizer_sha256": _hash_files(tokenizer)}


def _hub_snapshot(model_id: str) -> tuple[str, Path | None]:
    """(revision, snapshot folder) of a Hub model in the local cache — no network."""
    try:
        from huggingface_hub import constants
        cache = Path(constants.HF_HUB_CACHE)
    except Exception:  # huggingface_hub missing or misconfigured: the revision is simply unknown
        return "unknown", None
    repo = cache / ("models--" + model_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return "unknown", None
    revision = ref.read_text().strip()
    snapshot = repo / "snapshots" / revision
    return revision, snapshot if snapshot.is_dir() else None


def _relative_name(path: Path, root: Path) -> str:
    """`path` relative to the atlas' build folder when it lives there, else just its name."""
    path, base = Path(path).resolve(), Path(root).resolve().parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name


def model_record(model_ref: str, local_model_dir: Path | None, root: Path) -> dict:
    """Which model made the activations: a Hub id + revision, or a local folder + content hashes."""
    local = Path(local_model_dir) if local_model_dir is not None else None
    if local is None and model_ref and Path(model_ref).is_dir():
        local = Path(model_ref)
    if local is not None:
        return {"source": "local", "path": _relative_name(local, root), **_folder_hashes(local)}
    revision, snapshot = _hub_snapshot(model_ref)
    rec = {"source": "hub", "id": model_ref, "revision": revision}
    if snapshot is not None:
        rec.update(_folder_hashes(snapshot))
    return rec


# ----------------------------------------------------------------------------- write / read


def build_manifest(raw_dir: os.PathLike | str, *, preset: dict, model_ref: str,
                   local_model_dir: Path | None) -> dict:
    """The manifest as a plain dict (what `write_manifest` serialises)."""
    raw = Path(raw_dir)
    stamps = read_stamps(raw)
    artifacts = []
    for name in artifact_names():
        path = raw / name
        if not path.is_file():
            continue
        stamp = stamps.get(name)
        artifacts.append({
            "name": name, "size": path.stat().st_size, "sha256": sha256_file(path),
            "stage": stamp["stage"] if stamp else _stage_from_name(name),
            "params": _artifact_params(name, stamp),
            "inputs": dict(stamp["inputs"]) if stamp else {},
        })
    return {
        "format": MANIFEST_FORMAT,
        "artifacts": artifacts,
        "build": {"preset": preset, "model": model_record(model_ref, local_model_dir, raw),
                  "packages": package_versions(), "code_commit": code_commit()},
    }


def dumps(manifest: dict) -> str:
    """The canonical serialisation: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_manifest(raw_dir: os.PathLike | str, *, preset: dict, model_ref: str,
                   local_model_dir: Path | None) -> Path:
    """Write `atlas_manifest.json` in `raw_dir`, atomically; returns its path.

    An unchanged manifest is left untouched, so a re-run that rebuilt nothing changes no file.
    """
    text = dumps(build_manifest(raw_dir, preset=preset, model_ref=model_ref, local_model_dir=local_model_dir))
    path = Path(raw_dir) / layout.MANIFEST
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        with layout.atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return path


def read_manifest(atlas_dir: os.PathLike | str) -> dict:
    """The manifest of an atlas folder (raw or exported); AtlasFileError if missing or malformed."""
    path = Path(atlas_dir) / layout.MANIFEST
    if not path.is_file():
        raise layout.AtlasFileError(path, "file not found")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise layout.AtlasFileError(path, f"not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise layout.AtlasFileError(path, "no 'artifacts' list")
    for i, a in enumerate(manifest["artifacts"]):
        if not isinstance(a, dict) or not {"name", "size", "sha256"} <= set(a):
            raise layout.AtlasFileError(path, f"artifact #{i} lacks name/size/sha256")
        if "/" in a["name"] or "\\" in a["name"] or a["name"].startswith("."):
            raise layout.AtlasFileError(path, f"artifact #{i} has a non-plain file name {a['name']!r}")
    return manifest
