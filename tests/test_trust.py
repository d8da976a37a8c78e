"""Trust in a build: provenance, byte-identical rebuilds, resumable stages, no half-written files, clear errors.

The slow tests drive the real CLI (`scripts/build_atlas.py --preset tiny`) in subprocesses:
  * an uninterrupted build A (once per module);
  * a second build B in another folder: identical to A (bytes for parquet/CSV/JSON, content for HDF5);
  * a build killed (SIGKILL) after the first extraction checkpoint, then re-run: it resumes and ends
    identical to A, and the kill left no file under a final release name;
  * the bad-input catalogue: one clear line on stderr, exit code != 0, nothing written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from builder_utils import fixtures, layout, manifest
from builder_utils.validate import validate_atlas

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build_atlas.py"
BUILD_TIMEOUT_S = 600
CHECKPOINT = f".{layout.OBJECT_ACTIVATIONS}.ckpt"       # where the pipeline checkpoints 12_object extraction


def run_build(out: Path, *extra: str, timeout: int = BUILD_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILD), "--preset", "tiny", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# ----------------------------------------------------------------------------- comparing two builds


def h5_content(path: Path) -> dict:
    """Every group, dataset and attribute of an HDF5 file: {path: (kind, dtype, shape, values, attrs)}."""
    out = {}

    def attrs(obj) -> dict:
        return {k: np.asarray(v).tolist() if not isinstance(v, (str, bytes)) else v for k, v in obj.attrs.items()}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            value = obj[()]
            out[name] = ("dataset", str(obj.dtype), obj.shape,
                         value.tobytes() if isinstance(value, np.ndarray) and value.dtype.kind != "O"
                         else repr(np.asarray(value).tolist()), attrs(obj))
        else:
            out[name] = ("group", None, None, None, attrs(obj))

    with h5py.File(path, "r") as f:
        out["/"] = ("group", None, None, None, attrs(f))
        f.visititems(visit)
    return out


def build_files(out: Path) -> list[str]:
    """The build's files, relative to `out`: everything but hidden temporaries and caches."""
    files = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if p.is_file() and not any(part.startswith(".") and part != ".stamps" for part in rel.parts):
            files.append(rel.as_posix())
    return files


def assert_identical_builds(a: Path, b: Path) -> None:
    fa, fb = build_files(a), build_files(b)
    assert fa == fb, f"file sets differ: only in {a}: {sorted(set(fa) - set(fb))}; only in {b}: " \
                     f"{sorted(set(fb) - set(fa))}"
    differing = []
    for rel in fa:
        pa, pb = a / rel, b / rel
        if rel.endswith(".h5"):
            same = h5_content(pa) == h5_content(pb)
        else:   # parquet, CSV, JSON, README, safetensors, tokenizer: bytes
            same = pa.read_bytes() == pb.read_bytes()
        if not same:
            differing.append(rel)
    assert not differing, f"{len(differing)} file(s) differ between {a} and {b}: {differing[:10]}"


# ----------------------------------------------------------------------------- fast: the manifest


@pytest.fixture(scope="module")
def prompts_only(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("manifest") / "raw"
    fixtures.write_fixture_atlas(raw, n_pairs=6, width=32, n_prompts=10, activations=False, derived=False)
    return raw


def _stamp(raw: Path, stage: str, outputs: list[str], params: dict) -> None:
    (raw / ".stamps").mkdir(exist_ok=True)
    (raw / ".stamps" / f"{stage}.json").write_text(json.dumps(
        {"stage": stage, "outputs": outputs, "fingerprint": {"params": params, "inputs": {}}}))


def test_manifest_records_each_artifact_and_the_build(prompts_only, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(prompts_only, raw)
    _stamp(raw, "11A_object_prompts", [layout.OBJECT_PROMPTS, layout.OBJECT_PROMPT_STATS],
           {"seed": 42, "n_generate": 3, "n_keep": 3})
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "tokenizer.json").write_text("{}")
    path = manifest.write_manifest(raw, preset={"name": "tiny", "seed": 42}, model_ref=str(model),
                                   local_model_dir=model)
    assert path == raw / layout.MANIFEST
    m = manifest.read_manifest(raw)
    by_name = {a["name"]: a for a in m["artifacts"]}
    assert set(by_name) == {layout.OBJECT_PROMPTS, layout.OBJECT_PROMPT_STATS, layout.CHECKER_PROMPTS,
                            layout.TOKEN_CHECKER_PROMPTS}
    a = by_name[layout.OBJECT_PROMPTS]
    assert a["size"] == (raw / a["name"]).stat().st_size
    assert a["sha256"] == manifest.sha256_file(raw / a["name"])
    assert a["stage"] == "11A_object_prompts" and a["params"] == {"seed": 42, "n_generate": 3, "n_keep": 3}
    assert by_name[layout.CHECKER_PROMPTS]["stage"] == "11B_checker_prompts"     # no stamp: named by its file
    build = m["build"]
    assert build["preset"] == {"name": "tiny", "seed": 42}
    assert build["model"]["source"] == "local" and build["model"]["path"] == "model"     # relative, not absolute
    assert build["model"]["weights_files"] == ["model.safetensors"]
    assert build["model"]["weights_sha256"] and build["model"]["tokenizer_sha256"]
    assert set(manifest.PACKAGES) <= set(build["packages"])
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", build["code_commit"])
    assert str(tmp_path) not in path.read_text()


def test_manifest_is_byte_identical_across_folders(prompts_only, tmp_path):
    texts = []
    for name in ("one", "two/deeper"):
        raw = tmp_path / name / "raw"
        shutil.copytree(prompts_only, raw)
        for f in raw.iterdir():                     # different mtimes must not matter
            os.utime(f, (1_000_000 + len(name), 1_000_000 + len(name)))
        manifest.write_manifest(raw, preset={"name": "x"}, model_ref="openai/circuit-sparsity", local_model_dir=None)
        texts.append((raw / layout.MANIFEST).read_bytes())
    assert texts[0] == texts[1]
    m = json.loads(texts[0])
    assert m["build"]["model"] == {"source": "hub", "id": "openai/circuit-sparsity", "revision": "unknown"}


def test_manifest_sees_setting_of_each_mask_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "13_object_masks_eps0.1_cons0.5.h5").write_bytes(b"x")
    _stamp(raw, "13_object_masks", ["13_object_masks_eps0.1_cons0.5.h5"], {"settings": [[0.1, 0.5]]})
    manifest.write_manifest(raw, preset={}, model_ref="m/x", local_model_dir=None)
    (entry,) = manifest.read_manifest(raw)["artifacts"]
    assert entry["params"] == {"settings": [[0.1, 0.5]], "epsilon": 0.1, "consistency": 0.5}


def test_read_manifest_rejects_bad_files(tmp_path):
    with pytest.raises(layout.AtlasFileError, match="file not found"):
        manifest.read_manifest(tmp_path)
    (tmp_path / layout.MANIFEST).write_text("{not json")
    with pytest.raises(layout.AtlasFileError, match="not valid JSON"):
        manifest.read_manifest(tmp_path)
    (tmp_path / layout.MANIFEST).write_text(json.dumps({"artifacts": [{"name": "../x", "size": 1, "sha256": "0"}]}))
    with pytest.raises(layout.AtlasFileError, match="non-plain file name"):
        manifest.read_manifest(tmp_path)


def test_atomic_output_leaves_nothing_under_the_final_name(tmp_path):
    final = tmp_path / "13_object_masks_eps0.5_cons0.8.h5"
    with pytest.raises(RuntimeError):
        with layout.atomic_output(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- slow: real builds


@pytest.fixture(scope="module")
def build_a(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build_a") / "out"
    res = run_build(out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_tiny_build_validates_and_carries_its_manifest(build_a):
    report = validate_atlas(build_a / "CSP-Atlas")
    assert report.ok, report.render()
    assert not [r for r in report.by_check("thresholds") if r.skipped and r.file != layout.TOKEN_CHECKER_MASKS]
    m = manifest.read_manifest(build_a / "CSP-Atlas")
    assert (build_a / "CSP-Atlas" / layout.MANIFEST).read_bytes() == (build_a / "raw" / layout.MANIFEST).read_bytes()
    stages = {a["name"]: a for a in m["artifacts"]}
    assert stages[layout.OBJECT_ACTIVATIONS]["params"]["position"] == "last"
    assert {"batch_size", "dtype"} <= set(stages[layout.OBJECT_ACTIVATIONS]["params"])
    assert m["build"]["preset"]["name"] == "tiny" and m["build"]["model"]["source"] == "local"


@pytest.mark.slow
def test_two_builds_in_different_folders_are_identical(build_a, tmp_path):
    out = tmp_path / "elsewhere" / "out"
    res = run_build(out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_identical_builds(build_a, out)


# Runs build_atlas.py with a checkpoint after every extraction batch, and parks the process right
# after the first checkpoint is written, so the test can kill it at a known point mid-extraction.
KILL_HARNESS = r"""
import functools, runpy, sys, time
sys.path.insert(0, {root!r})
from builder_utils import activations
_save = activations._save_checkpoint
def save_then_park(*args, **kwargs):
    _save(*args, **kwargs)
    time.sleep(3600)
activations._save_checkpoint = save_then_park
activations.extract_activations = functools.partial(activations.extract_activations, checkpoint_every=0)
sys.argv = ["build_atlas.py", "--preset", "tiny", "--out", {out!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_a_rerun_skips_every_current_stage_and_force_rebuilds_them(build_a, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(build_a, out, symlinks=True)
    before = _snapshot(out)
    rerun = run_build(out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "(0 stage(s) run, 13 up to date)" in rerun.stdout, rerun.stdout[-2000:]
    assert _snapshot(out) == before
    contents = _contents(out)
    forced = run_build(out, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "(13 stage(s) run, 0 up to date)" in forced.stdout, forced.stdout[-2000:]
    assert _snapshot(out) != before and _contents(out) == contents    # rewritten, byte for byte the same


@pytest.mark.slow
def test_killed_build_resumes_and_ends_identical(build_a, tmp_path):
    out = tmp_path / "killed" / "out"
    raw = out / "raw"
    # Start from build A's mini model (its own determinism is the two-builds test's business), so
    # this test spends its time on the stages it is about.
    shutil.copytree(build_a / "model", out / "model")
    (raw / ".stamps").mkdir(parents=True)
    shutil.copyfile(build_a / "raw" / ".stamps" / "mini_model.json", raw / ".stamps" / "mini_model.json")
    code = KILL_HARNESS.format(root=str(ROOT), out=str(out), script=str(BUILD))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while not (raw / CHECKPOINT).is_file():
            if proc.poll() is not None:
                pytest.fail(f"the build ended (rc {proc.returncode}) before any extraction checkpoint:\n"
                            + proc.stderr.read().decode()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("no extraction checkpoint within the timeout")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)       # the group holds only the harness process we started
        proc.communicate()

    # The interrupted stage left nothing under its final name, and later stages never started.
    final_names = set(layout.release_file_names()) | {layout.TOKEN_CHECKER_ACTIVATIONS, layout.MANIFEST}
    present = {p.name for p in raw.iterdir()} & final_names
    assert layout.OBJECT_ACTIVATIONS not in present
    assert present == {layout.OBJECT_PROMPTS, layout.CHECKER_PROMPTS, layout.TOKEN_CHECKER_PROMPTS}, present
    assert not (out / "CSP-Atlas").exists()
    # What does sit under a final name is complete: byte-identical to the uninterrupted build's.
    for name in present:
        assert (raw / name).read_bytes() == (build_a / "raw" / name).read_bytes(), name

    res = run_build(out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[mini_model] up to date, skipped" in res.stdout
    assert "[11A_object_prompts] up to date, skipped" in res.stdout
    first_bar = re.search(r"extract\[\w+\]:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", res.stderr)
    assert first_bar and 0 < int(first_bar[1]) < int(first_bar[2]), \
        "the re-run did not resume the object extraction from its checkpoint"
    assert not (raw / CHECKPOINT).exists()
    assert_identical_builds(build_a, out)


# ----------------------------------------------------------------------------- slow: bad inputs


def _snapshot(path: Path) -> dict:
    if not path.exists():
        return {}
    return {p.relative_to(path).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


def _contents(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


PROGRESS_BAR = re.compile(r"\d+%\||\| *\d+/\d+ \[")      # tqdm lines (model loading, stages) are not messages


def _assert_one_clear_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [l for l in res.stderr.splitlines() if l.strip() and not PROGRESS_BAR.search(l)]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{res.stderr[-2000:]}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def _damaged_copy(build_a: Path, tmp_path: Path, damage) -> Path:
    out = tmp_path / "out"
    shutil.copytree(build_a, out, symlinks=True)
    damage(out / "raw")
    return out


def _truncate(raw: Path) -> None:
    data = (raw / layout.OBJECT_PROMPTS).read_bytes()
    (raw / layout.OBJECT_PROMPTS).write_bytes(data[: len(data) // 3])


def _drop_column(raw: Path) -> None:
    df = pd.read_parquet(raw / layout.CHECKER_PROMPTS)
    df.drop(columns=["prompt_text"]).to_parquet(raw / layout.CHECKER_PROMPTS, index=False)


@pytest.mark.slow
def test_bad_input_unknown_preset(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(BUILD), "--preset", "huge", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    _assert_one_clear_line(res, "huge", "tiny")
    assert not out.exists()


@pytest.mark.slow
def test_bad_input_output_path_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    _assert_one_clear_line(run_build(out), str(blocker))
    assert blocker.read_text() == "not a folder" and list(tmp_path.iterdir()) == [blocker]


@pytest.mark.slow
def test_bad_input_model_path_missing(tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "no_such_model"
    _assert_one_clear_line(run_build(out, "--model", str(missing)), str(missing))
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage,needle", [(_truncate, layout.OBJECT_PROMPTS), (_drop_column, "prompt_text")],
                         ids=["unreadable data folder", "prompts parquet missing a column"])
def test_bad_input_in_the_data_folder(build_a, tmp_path, damage, needle):
    out = _damaged_copy(build_a, tmp_path, damage)
    before = _snapshot(out)
    res = run_build(out)
    _assert_one_clear_line(res, needle)
    assert _snapshot(out) == before, "the failed build wrote or changed files"
