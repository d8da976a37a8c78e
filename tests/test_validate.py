"""The corruption suite: every injected fault is caught, by exactly the checks that should catch it.

One small atlas is built once per session (the planted fixture of `builder_utils.fixtures`,
stages 13/14 and the analyses run by the real pipeline code, the provenance manifest, the Hub
export). Each test copies it, injects one fault, validates, and asserts the EXACT set of
(check, file) failures: the fault is found where it is, and nothing untouched fails.

Two variants of the atlas:
  full  — the exported folder: raw files + data/<config> parquet + atlas_manifest.json + activations;
  hub   — what the Hub release looks like as downloaded: raw files only, no activations, no manifest.
In `full`, every fault that changes a file's bytes also fails that file's checksum.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from builder_utils import export, fixtures, layout, manifest
from builder_utils.concepts import KEYWORD_MAP
from builder_utils.validate import CHECK_ORDER, validate_atlas

ROOT = Path(__file__).resolve().parents[1]
HUB_LEFT_OUT = (layout.OBJECT_ACTIVATIONS, layout.CHECKER_ACTIVATIONS, layout.TOKEN_CHECKER_ACTIVATIONS,
                layout.MANIFEST, layout.OBJECT_PROMPT_STATS)


def _keep_checker_objects(raw: Path, keep: set[str]) -> None:
    """Limit the checker prompt sets to `keep`, as the tiny preset does (a 5× smaller atlas to validate)."""
    for name in (layout.CHECKER_PROMPTS, layout.TOKEN_CHECKER_PROMPTS):
        df = pd.read_parquet(raw / name)
        layout.write_table(df[df["object"].isin(keep)].reset_index(drop=True), raw / name)
    for name in (layout.CHECKER_ACTIVATIONS, layout.TOKEN_CHECKER_ACTIVATIONS):
        acts = layout.read_activations(raw / name)
        idx = [i for i, k in enumerate(acts.keys) if k in keep]
        layout.write_activations(raw / name, layout.Activations(
            [acts.keys[i] for i in idx], acts.activation_sum[idx], acts.firing_count[idx], acts.n_prompts[idx],
            acts.attrs))


@pytest.fixture(scope="session")
def built_atlas(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("validate")
    raw = base / "raw"
    info = fixtures.write_fixture_atlas(raw, n_pairs=8, width=32, n_prompts=10, seed=3, derived=False)
    _keep_checker_objects(raw, set(info.concept_keys) & set(KEYWORD_MAP))
    fixtures.run_derived_stages(info)
    manifest.write_manifest(raw, preset={"name": "fixture", "seed": 3}, model_ref=fixtures.MODEL_ID,
                            local_model_dir=None)
    full = base / "CSP-Atlas"
    export.export_hub(raw, full)
    hub = base / "hub"
    hub.mkdir()
    for p in raw.iterdir():
        if p.is_file() and p.name not in HUB_LEFT_OUT:
            shutil.copyfile(p, hub / p.name)
    return {"full": full, "hub": hub}


@pytest.fixture
def atlas_copy(built_atlas, tmp_path):
    def copy(variant: str) -> Path:
        dest = tmp_path / variant
        shutil.copytree(built_atlas[variant], dest)      # copies: the export's hard links are not shared
        return dest
    return copy


# ----------------------------------------------------------------------------- faults

def _h5(root: Path, name: str, fn) -> None:
    with h5py.File(root / name, "r+") as f:
        fn(f)


def flip_pair_mask_bit(root: Path) -> None:
    def fn(f):
        ds = f["pair_masks/layer_2/Assert___isolated_"]
        v = ds[()]
        v[0] = not v[0]
        ds[...] = v
    _h5(root, "13_object_masks_eps0.1_cons0.5.h5", fn)


def flip_checker_mask_bit(root: Path) -> None:
    def fn(f):
        ds = f["token_checker_masks/layer_6/ast__Break"]
        v = ds[()]
        v[5] = not v[5]
        ds[...] = v
    _h5(root, "13_checker_masks_eps0.1_cons0.8.h5", fn)


def delete_layer_group(root: Path) -> None:
    _h5(root, "13_object_masks_eps0.5_cons0.8.h5", lambda f: f.__delitem__("universal_masks/layer_5"))


def truncate_hdf5(root: Path) -> None:
    path = root / "13_checker_masks_eps0.1_cons0.2.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def swap_concept_names(root: Path) -> None:
    def fn(f):
        # Precondition: the two masks differ, at the /metrics layer too (else a swap is invisible there).
        a, b = (f[f"universal_masks/layer_{layout.JACCARD_LAYER}/{k}"][()] for k in ("ast__Assert", "ast__Pass"))
        assert (a != b).any() and a.any() and b.any()
        for l in range(layout.N_LAYERS):
            g = f[f"universal_masks/layer_{l}"]
            g.move("ast__Assert", "tmp")
            g.move("ast__Pass", "ast__Assert")
            g.move("tmp", "ast__Pass")
    _h5(root, "13_object_masks_eps0.001_cons0.2.h5", fn)


def swap_metadata_names(root: Path) -> None:
    def fn(f):
        names = list(f["metadata/ast_nodes"].asstr()[()])
        names[0], names[1] = names[1], names[0]
        del f["metadata/ast_nodes"]
        f["metadata"].create_dataset("ast_nodes", data=np.array(names, dtype=h5py.string_dtype()))
    _h5(root, "13_object_masks_eps0.1_cons0.8.h5", fn)


def wrong_width(root: Path) -> None:
    def fn(f):
        g = f["pair_masks/layer_2"]
        name = sorted(g)[0]
        wider = np.concatenate([g[name][()], np.zeros(8, bool)])
        del g[name]
        g.create_dataset(name, data=wider, compression="gzip")
    _h5(root, "13_object_masks_eps0.5_cons0.2.h5", fn)


def stray_dataset(root: Path) -> None:
    _h5(root, "13_checker_masks_eps0.001_cons0.8.h5",
        lambda f: f["token_checker_masks"].create_dataset("notes", data=np.zeros(3)))


def nan_in_activations(root: Path) -> None:
    def fn(f):
        g = f["activations/layer_3"]
        ds = g[sorted(g)[0]]
        v = ds[()]
        v[7] = np.nan
        ds[...] = v
    _h5(root, layout.OBJECT_ACTIVATIONS, fn)


def wrong_n_prompts(root: Path) -> None:
    def fn(f):
        ds = f["n_prompts/ast__Import"]
        ds[()] = int(ds[()]) + 1
    _h5(root, layout.CHECKER_ACTIVATIONS, fn)


def parquet_out_of_date(root: Path) -> None:
    path = sorted((root / "data" / "summary").glob("*.parquet"))[0]
    table = pq.read_table(path)
    df = table.to_pandas()
    df.loc[0, "mean_A_size"] += 1.0
    pq.write_table(type(table).from_pandas(df, schema=table.schema, preserve_index=False), path)


def missing_file(root: Path) -> None:
    (root / "14_target_checker_eps0.1_cons0.2.csv").unlink()


def alter_csv_row(root: Path) -> None:
    path = root / layout.TOKEN_INDEPENDENCE_DETAIL
    lines = path.read_text().splitlines(keepends=True)
    cells = lines[4].split(",")
    cells[2] = str(int(cells[2]) + 1)           # A_only of the 4th row
    lines[4] = ",".join(cells)
    path.write_text("".join(lines))


def alter_modularity_score(root: Path) -> None:
    path = root / layout.MODULARITY_SCORES
    df = pd.read_csv(path, index_col=0)
    df.iloc[2, 1] = (df.iloc[2, 1] + 1) % 9
    df.to_csv(path, lineterminator="\n")


def alter_summary(root: Path) -> None:
    path = root / layout.SUMMARY
    df = pd.read_csv(path)
    df.loc[4, "blt_concept_fraction"] = round(float(df.loc[4, "blt_concept_fraction"]) + 0.01, 4)
    df.to_csv(path, index=False, lineterminator="\n")


def wrong_setting_metadata(root: Path) -> None:
    _h5(root, "13_checker_masks_eps0.5_cons0.2.h5", lambda f: f["metadata"].attrs.__setitem__("epsilon", 0.1))


def duplicate_prompt_rows(root: Path) -> None:
    path = root / layout.CHECKER_PROMPTS
    df = pd.read_parquet(path)
    df.iloc[1] = df.iloc[0]                     # same unit, so every count stays right
    layout.write_table(df, path)


def manifest_checksum_mismatch(root: Path) -> None:
    path = root / layout.MANIFEST
    m = json.loads(path.read_text())
    entry = next(a for a in m["artifacts"] if a["name"] == layout.SUMMARY)
    entry["sha256"] = "0" * 64
    path.write_text(manifest.dumps(m))


# fault -> (expected failures in `full` minus checksums, files whose checksum fails in `full`,
#           expected failures in `hub`, or None where the fault does not apply to that variant)
F = "13_object_masks_eps0.1_cons0.5.h5"
FAULTS = {
    "flipped pair-mask bit": (flip_pair_mask_bit,
                              {("thresholds", F), ("marginalisation", F)}, [F],
                              {("marginalisation", F)}),
    # Without activations a checker mask has no source to compare with: the decomposition catches it.
    "flipped checker-mask bit": (flip_checker_mask_bit,
                                 {("thresholds", "13_checker_masks_eps0.1_cons0.8.h5")},
                                 ["13_checker_masks_eps0.1_cons0.8.h5"],
                                 {("decomposition", "14_target_checker_eps0.1_cons0.8.csv")}),
    "deleted layer group": (delete_layer_group,
                            {("hdf5_structure", "13_object_masks_eps0.5_cons0.8.h5")},
                            ["13_object_masks_eps0.5_cons0.8.h5"],
                            {("hdf5_structure", "13_object_masks_eps0.5_cons0.8.h5")}),
    "truncated HDF5": (truncate_hdf5,
                       {("hdf5_structure", "13_checker_masks_eps0.1_cons0.2.h5")},
                       ["13_checker_masks_eps0.1_cons0.2.h5"],
                       {("hdf5_structure", "13_checker_masks_eps0.1_cons0.2.h5")}),
    "swapped concept names": (swap_concept_names,
                              {("marginalisation", "13_object_masks_eps0.001_cons0.2.h5"),
                               ("jaccard_metrics", "13_object_masks_eps0.001_cons0.2.h5")},
                              ["13_object_masks_eps0.001_cons0.2.h5"],
                              {("marginalisation", "13_object_masks_eps0.001_cons0.2.h5"),
                               ("jaccard_metrics", "13_object_masks_eps0.001_cons0.2.h5")}),
    "swapped names in /metadata": (swap_metadata_names,
                                   {("counts", "13_object_masks_eps0.1_cons0.8.h5")},
                                   ["13_object_masks_eps0.1_cons0.8.h5"],
                                   {("counts", "13_object_masks_eps0.1_cons0.8.h5")}),
    "wrong width": (wrong_width,
                    {("hdf5_structure", "13_object_masks_eps0.5_cons0.2.h5")},
                    ["13_object_masks_eps0.5_cons0.2.h5"],
                    {("hdf5_structure", "13_object_masks_eps0.5_cons0.2.h5")}),
    "stray dataset": (stray_dataset,
                      {("hdf5_structure", "13_checker_masks_eps0.001_cons0.8.h5")},
                      ["13_checker_masks_eps0.001_cons0.8.h5"],
                      {("hdf5_structure", "13_checker_masks_eps0.001_cons0.8.h5")}),
    "NaN in activations": (nan_in_activations,
                           {("finite", layout.OBJECT_ACTIVATIONS)}, [layout.OBJECT_ACTIVATIONS], None),
    "wrong n_prompts": (wrong_n_prompts,
                        {("counts", layout.CHECKER_ACTIVATIONS)}, [layout.CHECKER_ACTIVATIONS], None),
    "parquet config out of date": (parquet_out_of_date, {("parquet_configs", "data/summary")}, [], None),
    "missing file": (missing_file,
                     {("presence", "14_target_checker_eps0.1_cons0.2.csv")}, [],
                     {("presence", "14_target_checker_eps0.1_cons0.2.csv")}),
    "CSV row altered": (alter_csv_row,
                        {("token_independence", layout.TOKEN_INDEPENDENCE_DETAIL)},
                        [layout.TOKEN_INDEPENDENCE_DETAIL],
                        {("token_independence", layout.TOKEN_INDEPENDENCE_DETAIL)}),
    "modularity score altered": (alter_modularity_score,
                                 {("modularity", layout.MODULARITY_SCORES)}, [layout.MODULARITY_SCORES],
                                 {("modularity", layout.MODULARITY_SCORES)}),
    "summary row altered": (alter_summary,
                            {("summary", layout.SUMMARY)}, [layout.SUMMARY],
                            {("summary", layout.SUMMARY)}),
    "wrong (ε, C) in metadata": (wrong_setting_metadata,
                                 {("metadata_setting", "13_checker_masks_eps0.5_cons0.2.h5")},
                                 ["13_checker_masks_eps0.5_cons0.2.h5"],
                                 {("metadata_setting", "13_checker_masks_eps0.5_cons0.2.h5")}),
    "duplicate prompt rows": (duplicate_prompt_rows,
                              {("duplicates", layout.CHECKER_PROMPTS)}, [layout.CHECKER_PROMPTS],
                              {("duplicates", layout.CHECKER_PROMPTS)}),
    "manifest checksum mismatch": (manifest_checksum_mismatch, set(), [layout.SUMMARY], None),
}
# The `hub` variants repeat the faults without manifest and activations: marked slow (make test runs them).
CASES = [pytest.param(name, variant, id=f"{name}-{variant}",
                      marks=[pytest.mark.slow] if variant == "hub" else [])
         for name, (_, _, _, hub) in FAULTS.items()
         for variant in ("full", "hub") if variant == "full" or hub is not None]


# ----------------------------------------------------------------------------- tests


def test_clean_atlas_validates_with_zero_failures(built_atlas):
    full = validate_atlas(built_atlas["full"])
    assert full.ok, full.render()
    ran = {r.name for r in full.results if not r.skipped}
    assert ran == set(CHECK_ORDER), f"checks that never ran on the full atlas: {set(CHECK_ORDER) - ran}"

    hub = validate_atlas(built_atlas["hub"])
    assert hub.ok, hub.render()
    # Without activations and manifest those checks are skipped, and the report says why.
    assert all(r.skipped for r in hub.by_check("thresholds")) and hub.by_check("thresholds")
    assert all("absent" in r.message for r in hub.by_check("thresholds"))
    assert all(r.skipped for r in hub.by_check("checksum"))
    text = hub.render()
    assert "no atlas_manifest.json" in text and "SKIP  thresholds" in text


def test_the_suite_has_at_least_twelve_faults():
    assert len(FAULTS) >= 12


@pytest.mark.parametrize("fault,variant", CASES)
def test_fault_is_caught_exactly(fault, variant, atlas_copy):
    inject, full_expected, changed, hub_expected = FAULTS[fault]
    root = atlas_copy(variant)
    inject(root)
    report = validate_atlas(root)
    if variant == "full":
        expected = set(full_expected) | {("checksum", f) for f in changed}
    else:
        expected = set(hub_expected)
    assert report.failed() == expected, report.render()
    text = report.render()
    for check, file in expected:
        res = next(r for r in report.failures if (r.name, r.file) == (check, file))
        assert res.message, f"{check} on {file} failed without saying why"
        assert any(line.startswith(f"      ✗ {file}: ") for line in _section(text, check)), text


def _section(text: str, check: str) -> list[str]:
    """The indented lines under a check's status line in the rendered report."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"FAIL  {check} "))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("      "):
            break
        out.append(line)
    return out


def test_failure_messages_show_the_first_differences(atlas_copy):
    root = atlas_copy("hub")
    flip_pair_mask_bit(root)
    alter_csv_row(root)
    report = validate_atlas(root)
    by = {(r.name, r.file): r.message for r in report.failures}
    marg = by[("marginalisation", F)]
    assert "ast__Assert layer 2" in marg and "channel(s) [0]" in marg
    ti = by[("token_independence", layout.TOKEN_INDEPENDENCE_DETAIL)]
    assert "row 3" in ti and "A_only" in ti


def test_the_script_exits_1_on_failure_and_0_when_clean(built_atlas, atlas_copy):
    script = [sys.executable, str(ROOT / "scripts" / "validate_atlas.py")]
    clean = subprocess.run(script + [str(built_atlas["hub"]), "--no-parquet"], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Result: OK" in clean.stdout
    root = atlas_copy("hub")
    missing_file(root)
    bad = subprocess.run(script + [str(root)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAIL  presence" in bad.stdout and "14_target_checker_eps0.1_cons0.2.csv" in bad.stdout
    nowhere = subprocess.run(script + [str(root / "nope")], capture_output=True, text=True)
    assert nowhere.returncode == 1 and nowhere.stderr.count("\n") == 1 and "not found" in nowhere.stderr
