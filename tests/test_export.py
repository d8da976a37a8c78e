"""The Hub export end to end: raw HDF5 + tables -> CSP-Atlas.py rows -> parquet -> `load_dataset`.

Expected values are read from the raw files with h5py / pandas directly, never through the
builder, so a builder bug cannot hide behind its own output.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from builder_utils import concepts, layout, manifest
from builder_utils.export import BUILDER_SCRIPT, RAW_FILES, STAGING, export_hub, load_builder_module
from builder_utils.fixtures import write_fixture_atlas

BUILDER = load_builder_module()
CONFIGS = {c.name: c for c in BUILDER.CONFIGS}
DEFAULT = "masks_eps0.5_cons0.8"
ROOT = Path(__file__).resolve().parents[1]
FIRST_ROWS_MAX_BYTES = 200_000      # the viewer's /first-rows budget in production
VIEWER_ROWS = 100


@pytest.fixture(scope="module")
def exported(tiny_raw_atlas, tmp_path_factory):
    # Named like the published repo: a folder `CSP-Atlas` is where a stray `CSP-Atlas.py` would break loading.
    out = tmp_path_factory.mktemp("export") / "CSP-Atlas"
    return out, export_hub(tiny_raw_atlas, out)


def load(out: Path, name: str, **kw):
    return datasets.load_dataset(str(out), name, split="train", **kw)


def card_metadata(out: Path) -> dict:
    text = (out / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# ----------------------------------------------------------------------------- raw readers (h5py / pandas only)


def raw_vectors(path: Path, group: str) -> dict[tuple[str, int], np.ndarray]:
    with h5py.File(path, "r") as f:
        return {(key, int(layer.split("_")[1])): f[group][layer][key][()]
                for layer in f[group] for key in f[group][layer]}


def raw_attrs(path: Path, group: str) -> dict:
    with h5py.File(path, "r") as f:
        return dict(f[group].attrs)


def raw_n_prompts(path: Path) -> dict[str, int]:
    with h5py.File(path, "r") as f:
        return {k: int(f["n_prompts"][k][()]) for k in f["n_prompts"]}


def by_key(ds, *key_columns) -> dict:
    rows = ds.to_list()
    keyed = {tuple(r[c] for c in key_columns): r for r in rows}
    assert len(keyed) == len(rows), "duplicate keys"
    return keyed


# ----------------------------------------------------------------------------- per-family expectations


def check_masks(ds, raw: Path, cfg):
    path = raw / cfg.source
    group, key_col = {"masks": ("universal_masks", "concept"), "pair_masks": ("pair_masks", "pair")}.get(
        cfg.family, ("token_checker_masks", "object"))
    expected = raw_vectors(path, group)
    rows = by_key(ds, key_col, "layer")
    assert set(rows) == set(expected)
    md = raw_attrs(path, "metadata")
    eps = md["epsilon"]
    cons = md["consistency_thresh"] if "consistency_thresh" in md else md["consistency_threshold"]
    if cfg.epsilon is not None:
        assert (eps, cons) == (cfg.epsilon, cfg.consistency)
    if cfg.family == "token_checker_masks":
        stats = {k[: -len("_n_valid")]: int(v) for k, v in raw_attrs(path, "generation_stats").items()}
    elif cfg.family == "checker_masks":
        stats = raw_n_prompts(raw / layout.CHECKER_ACTIVATIONS)
    for (key, layer), mask in expected.items():
        r = rows[(key, layer)]
        assert r["mask"] == mask.tolist()
        assert r["active_idx"] == np.flatnonzero(mask).tolist()
        assert r["n_active"] == int(mask.sum())
        assert (r["epsilon"], r["consistency"]) == (eps, cons)
        if cfg.family == "masks":
            assert (r["concept_type"], r["name"]) == tuple(key.split("__", 1))
        elif cfg.family == "pair_masks":
            assert (r["ast_node"], r["builtin_obj"]) == tuple(key.split("__", 1))
        else:
            assert r["concept_type"] == key.split("__", 1)[0]
            assert r["keyword"] == concepts.KEYWORD_MAP.get(key, {}).get("keyword")
            assert r["n_prompts"] == stats[key]
    # Sorted unit-major, layer-minor: the order a reader expects.
    keys = [(r[key_col], r["layer"]) for r in ds.to_list()]
    assert keys == sorted(keys)


def check_activations(ds, raw: Path, cfg):
    path = raw / cfg.source
    sums, counts, n_prompts = raw_vectors(path, "activations"), raw_vectors(path, "firing_counts"), raw_n_prompts(path)
    key_col = "pair" if cfg.family == "object_activations" else "object"
    assert (ds.features["activation_sum"].feature.dtype, ds.features["firing_count"].feature.dtype) == (
        "float32", "int32")
    rows = by_key(ds, key_col, "layer")
    assert set(rows) == set(sums)
    for (key, layer), s in sums.items():
        r = rows[(key, layer)]
        np.testing.assert_array_equal(np.asarray(r["activation_sum"], np.float32), s)   # float32 -> float is exact
        np.testing.assert_array_equal(r["firing_count"], counts[(key, layer)])
        assert r["n_prompts"] == n_prompts[key]


def check_target_checker(ds, raw: Path, cfg):
    wide = pd.read_csv(raw / cfg.source)
    expected = {}
    for _, r in wide.iterrows():
        for col in [c for c in wide.columns if c.startswith("L")]:
            co, sh, to = (int(x) for x in r[col].split(" / "))
            expected[(r["target"], int(col[1:]))] = (co, sh, to, round(co / (co + sh), 4) if co + sh else 0.0)
    rows = by_key(ds, "target", "layer")
    assert set(rows) == set(expected)
    for key, (co, sh, to, frac) in expected.items():
        r = rows[key]
        assert (r["concept_only"], r["shared"], r["token_only"], r["concept_fraction"]) == (co, sh, to, frac)
        assert r["concept_type"] == key[0].split("__", 1)[0]


def check_table(ds, raw: Path, cfg):
    path = raw / cfg.source
    if path.suffix == ".parquet":
        expected = pd.read_parquet(path)
    elif cfg.family == "modularity_scores":
        expected = pd.read_csv(path, index_col=0).rename_axis("object").reset_index()
    else:
        expected = pd.read_csv(path)
    got = ds.to_pandas()
    assert sorted(got.columns) == sorted(expected.columns)
    pd.testing.assert_frame_equal(got[list(expected.columns)], expected, check_dtype=False)


CHECKS = {"masks": check_masks, "pair_masks": check_masks, "checker_masks": check_masks,
          "token_checker_masks": check_masks, "object_activations": check_activations,
          "checker_activations": check_activations, "target_checker": check_target_checker}


# ----------------------------------------------------------------------------- the export round trip


def test_registry_has_every_release_config():
    assert len(CONFIGS) == 48
    for e, c in layout.SETTINGS:
        tag = layout.setting_tag(e, c)
        for family in ("masks", "pair_masks", "checker_masks", "target_checker"):
            assert f"{family}_{tag}" in CONFIGS
    assert BUILDER.DEFAULT_CONFIG == DEFAULT and BUILDER.CSPAtlas.DEFAULT_CONFIG_NAME == DEFAULT


@pytest.mark.parametrize("name", list(CONFIGS))
def test_load_dataset_gives_back_the_raw_values(exported, tiny_raw_atlas, name):
    out, report = exported
    cfg = CONFIGS[name]
    ds = load(out, name)
    assert len(ds) == next(c.num_rows for c in report.written if c.name == name) > 0
    CHECKS.get(cfg.family, check_table)(ds, tiny_raw_atlas, cfg)


def test_config_names_default_first(exported):
    out, report = exported
    names = datasets.get_dataset_config_names(str(out))
    assert sorted(names) == sorted(CONFIGS) and names[0] == DEFAULT
    assert not report.skipped and report.card_configs == names
    # No name: the default config.
    assert datasets.load_dataset(str(out), split="train").features == load(out, DEFAULT).features


@pytest.mark.parametrize("name", list(CONFIGS))
def test_viewer_first_rows(exported, name):
    """What the viewer does: stream, take rows_max_number + 1, keep ≥ 10 rows within 200 kB."""
    out, report = exported
    rows = list(itertools.islice(load(out, name, streaming=True), VIEWER_ROWS + 1))
    n = next(c.num_rows for c in report.written if c.name == name)
    assert len(rows) == min(n, VIEWER_ROWS + 1)
    assert first_rows_bytes(rows) <= FIRST_ROWS_MAX_BYTES


def first_rows_bytes(rows: list[dict]) -> int:
    items = [{"row_idx": i, "row": r, "truncated_cells": []} for i, r in enumerate(rows[:10])]
    return len(json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode())


def test_release_width_masks_fit_the_first_rows_budget(tmp_path):
    raw = tmp_path / "raw"
    write_fixture_atlas(raw, n_pairs=6, width=2048, n_prompts=10)
    names = ["masks_eps0.5_cons0.8", "pair_masks_eps0.001_cons0.2", "checker_masks_eps0.001_cons0.2",
             "token_checker_masks"]
    out = tmp_path / "CSP-Atlas"
    export_hub(raw, out, configs=names)
    for name in names:
        assert load(out, name).features["mask"].length == 2048
        rows = list(itertools.islice(load(out, name, streaming=True), VIEWER_ROWS + 1))
        assert len(rows[0]["mask"]) == 2048
        assert first_rows_bytes(rows) <= FIRST_ROWS_MAX_BYTES, name


def test_card(exported, tiny_raw_atlas):
    out, _ = exported
    meta = card_metadata(out)
    assert meta["license"] == "apache-2.0" and meta["pretty_name"] and meta["tags"]
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == [DEFAULT]
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    for c in meta["configs"]:
        (pattern,) = [f["path"] for f in c["data_files"] if f["split"] == "train"]
        files = sorted(out.glob(pattern))
        assert files and all(f.suffix == ".parquet" for f in files)
        assert [f.name for f in files] == [f"train-{i:05d}-of-{len(files):05d}.parquet" for i in range(len(files))]
        declared = datasets.Features._from_yaml_list(infos[c["config_name"]]["features"])
        assert declared == datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
        assert infos[c["config_name"]]["splits"][0]["num_examples"] == sum(pq.read_metadata(f).num_rows
                                                                           for f in files)
    body = (out / "README.md").read_text(encoding="utf-8")
    for needle in ("load_dataset(", "hf_hub_download(", "@article{Wilam2026CSPAtlas", "## License"):
        assert needle in body


def test_card_cites_the_manifest(tiny_raw_atlas, tmp_path):
    raw = copy_atlas(tiny_raw_atlas, tmp_path / "raw")
    manifest.write_manifest(raw, preset={"name": "tiny"}, model_ref="someone/some-model", local_model_dir=None)
    out = tmp_path / "CSP-Atlas"
    export_hub(raw, out, configs=["summary"])
    assert (out / layout.MANIFEST).read_bytes() == (raw / layout.MANIFEST).read_bytes()
    body = (out / "README.md").read_text(encoding="utf-8")
    assert "`someone/some-model`" in body and "`tiny`" in body and layout.MANIFEST in body


def test_raw_files_at_the_root_and_no_script(exported, tiny_raw_atlas):
    out, report = exported
    assert not list(out.glob("*.py"))
    present = [n for n in RAW_FILES if (tiny_raw_atlas / n).is_file()]
    assert len(present) >= len(layout.release_file_names()) and report.raw_files == present
    for name in present:
        assert (out / name).read_bytes() == (tiny_raw_atlas / name).read_bytes()
    patterns = [f["path"] for c in card_metadata(out)["configs"] for f in c["data_files"]]
    assert all(p.startswith("data/") for p in patterns)     # raw files are never configs


def test_large_configs_are_sharded(tiny_raw_atlas, tmp_path):
    out = tmp_path / "CSP-Atlas"
    report = export_hub(tiny_raw_atlas, out, configs=["checker_prompts"], max_shard_size="20KB")
    files = sorted((out / "data" / "checker_prompts").iterdir())
    assert len(files) > 1 and [f.name for f in files] == [f"train-{i:05d}-of-{len(files):05d}.parquet"
                                                          for i in range(len(files))]
    assert report.written[0].files == [f"data/checker_prompts/{f.name}" for f in files]
    check_table(load(out, "checker_prompts"), tiny_raw_atlas, CONFIGS["checker_prompts"])   # order kept too


def test_export_is_deterministic(exported, tiny_raw_atlas, tmp_path):
    out, _ = exported
    again = tmp_path / "CSP-Atlas"
    export_hub(tiny_raw_atlas, again)
    first = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert first == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in first:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


# ----------------------------------------------------------------------------- why the export exists


def test_hdf5_loader_fails_on_raw_activations(tiny_raw_atlas):
    """The viewer's error, reproduced with datasets 5.2's `hdf5` loader on the raw activation files.

    The viewer loads every `.h5` with features inferred from the first in name order,
    `12_checker_activations.h5`, whose scalar `/n_prompts/<key>` datasets cannot be sliced into
    rows. The object file fails one step earlier: its `/metadata/ast_nodes` and `/builtin_objs`
    string lists (different lengths) cannot form one struct column.
    """
    def first_row(files, streaming):
        return next(iter(datasets.load_dataset("hdf5", data_files=files, split="train", streaming=streaming)))

    everything = sorted(str(p) for p in tiny_raw_atlas.glob("*.h5"))
    assert Path(everything[0]).name == layout.CHECKER_ACTIVATIONS
    for files in (str(tiny_raw_atlas / layout.CHECKER_ACTIVATIONS), everything):
        with pytest.raises(ValueError, match="Illegal slicing argument for scalar dataspace"):
            first_row(files, streaming=True)                    # the viewer's path
        with pytest.raises(datasets.exceptions.DatasetGenerationError) as info:
            first_row(files, streaming=False)
        assert "Illegal slicing argument for scalar dataspace" in str(info.value.__cause__)
    with pytest.raises(pa.ArrowInvalid, match="Mismatching child array lengths"):
        first_row(str(tiny_raw_atlas / layout.OBJECT_ACTIVATIONS), streaming=True)


def test_hdf5_loader_reads_mask_files_silently_wrong(tmp_path):
    """With the release's shape (fewer AST nodes than builtins: 43 < 63) there is no error at all:
    rows = len(`/metadata/ast_nodes`), the first dataset in name order, and every "mask" is one bit."""
    pairs = ["For__abs", "For__len", "For__list", "If__len"]            # 2 AST nodes < 3 builtins
    rng = np.random.default_rng(0)
    stack = lambda keys: layout.MaskStack(keys, rng.random((len(keys), layout.N_LAYERS, 32)) < 0.3)
    path = tmp_path / layout.object_masks_name(0.5, 0.8)
    layout.write_object_masks(path, layout.ObjectMasks(
        0.5, 0.8, stack(pairs), stack(concepts.concept_keys(["For", "If"], ["abs", "len", "list"])),
        ["For", "If"], ["abs", "len", "list"]))
    ds = datasets.load_dataset("hdf5", data_files=str(path), split="train")
    assert len(ds) == 2
    assert isinstance(ds[0]["universal_masks"]["layer_0"]["ast__For"], bool)     # one bit of a 32-bit mask
    assert ds[0]["metadata"] == {"ast_nodes": "For", "builtin_objs": "abs"}


def test_script_named_after_the_folder_blocks_loading(exported, tmp_path):
    out, _ = exported
    broken = tmp_path / "CSP-Atlas"
    shutil.copytree(out / "data" / DEFAULT, broken / "data" / DEFAULT)
    shutil.copy(out / "README.md", broken / "README.md")
    assert len(load(broken, DEFAULT)) > 0
    shutil.copy(BUILDER_SCRIPT, broken / "CSP-Atlas.py")
    with pytest.raises(RuntimeError, match="Dataset scripts are no longer supported, but found CSP-Atlas.py"):
        load(broken, DEFAULT)
    with pytest.raises(RuntimeError, match="no longer supported"):
        datasets.get_dataset_config_names(str(broken))
    with pytest.raises(layout.AtlasFileError, match=r"CSP-Atlas\.py"):
        export_hub(out, broken, configs=["summary"])


# ----------------------------------------------------------------------------- the builder, used directly


def test_builder_directly(tiny_raw_atlas, tmp_path):
    builder = BUILDER.CSPAtlas(data_dir=str(tiny_raw_atlas), cache_dir=str(tmp_path))
    assert builder.config.name == DEFAULT
    width = next(iter(raw_vectors(tiny_raw_atlas / builder.config.source, "universal_masks").values())).shape[0]
    assert builder.info.features["mask"].length == width
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
    check_masks(ds, tiny_raw_atlas, builder.config)
    assert not any(tmp_path.glob("**/*.incomplete"))


# ----------------------------------------------------------------------------- bad inputs


def copy_atlas(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in drop])
    return dst


def test_unknown_config_names(tiny_raw_atlas, exported, tmp_path):
    with pytest.raises(ValueError, match="masks_eps0.3_cons0.8"):
        export_hub(tiny_raw_atlas, tmp_path / "out", configs=["summary", "masks_eps0.3_cons0.8"])
    assert not (tmp_path / "out" / "data").exists()
    with pytest.raises(ValueError, match="masks_eps0.3_cons0.8"):
        BUILDER.CSPAtlas(config_name="masks_eps0.3_cons0.8", data_dir=str(tiny_raw_atlas), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="masks_eps0.3_cons0.8"):
        load(exported[0], "masks_eps0.3_cons0.8")


def test_missing_required_file_names_it_before_writing(tiny_raw_atlas, tmp_path):
    missing = layout.checker_masks_name(0.1, 0.5)
    raw = copy_atlas(tiny_raw_atlas, tmp_path / "raw", drop=(missing, layout.SUMMARY))
    with pytest.raises(layout.AtlasFileError, match=rf"{missing}.*checker_masks_eps0\.1_cons0\.5.*14_summary\.csv"):
        export_hub(raw, tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists()
    with pytest.raises(layout.AtlasFileError, match=missing):
        builder = BUILDER.CSPAtlas(config_name="checker_masks_eps0.1_cons0.5", data_dir=str(raw),
                                   cache_dir=str(tmp_path / "cache"))
        builder.download_and_prepare()


def test_missing_optional_files_skip_their_configs(tiny_raw_atlas, tmp_path):
    out = tmp_path / "CSP-Atlas"
    wanted = ["checker_masks_eps0.5_cons0.8", "object_activations", "token_checker_masks",
              "token_independence_detail", "summary"]
    export_hub(tiny_raw_atlas, out, configs=wanted)
    assert (out / "data" / "object_activations").is_dir()
    optional = (layout.OBJECT_ACTIVATIONS, layout.CHECKER_ACTIVATIONS, layout.TOKEN_CHECKER_MASKS,
                layout.TOKEN_INDEPENDENCE_DETAIL)
    raw = copy_atlas(tiny_raw_atlas, tmp_path / "raw", drop=optional)
    report = export_hub(raw, out, configs=wanted)
    assert sorted(report.skipped) == ["object_activations", "token_checker_masks", "token_independence_detail"]
    assert layout.OBJECT_ACTIVATIONS in report.skipped["object_activations"]
    assert not (out / "data" / "object_activations").exists()         # the stale export is gone
    assert not (out / layout.OBJECT_ACTIVATIONS).exists() and (out / layout.SUMMARY).is_file()
    assert datasets.get_dataset_config_names(str(out)) == ["checker_masks_eps0.5_cons0.8", "summary"]
    # Without 12_checker_activations.h5 the checker masks' prompt counts are unknown: null, not invented.
    assert set(load(out, "checker_masks_eps0.5_cons0.8")["n_prompts"]) == {None}


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_hdf5_names_the_file(tiny_raw_atlas, tmp_path, damage):
    raw = copy_atlas(tiny_raw_atlas, tmp_path / "raw")
    path = raw / layout.object_masks_name(0.5, 0.8)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    for name in ("masks_eps0.5_cons0.8", "pair_masks_eps0.5_cons0.8"):
        with pytest.raises(layout.AtlasFileError, match=f"{path.name}.*(truncated or corrupt)"):
            export_hub(raw, tmp_path / "out", configs=[name])
    assert not (tmp_path / "out" / "data").exists()


def test_group_missing_a_layer_names_file_and_layer_and_writes_nothing(tiny_raw_atlas, tmp_path):
    out = tmp_path / "CSP-Atlas"
    names = ["masks_eps0.5_cons0.8", "pair_masks_eps0.5_cons0.8"]
    export_hub(tiny_raw_atlas, out, configs=names)
    before = {p: p.read_bytes() for p in (out / "data").rglob("*.parquet")}
    raw = copy_atlas(tiny_raw_atlas, tmp_path / "raw")
    path = raw / layout.object_masks_name(0.5, 0.8)
    with h5py.File(path, "a") as f:
        del f["pair_masks/layer_3"]
    with pytest.raises(layout.AtlasFileError, match=rf"{path.name}.*pair_masks.*layer_3"):
        export_hub(raw, out, configs=names)
    # The universal config was rebuilt (same bytes); the failed one kept its previous, complete files.
    assert {p: p.read_bytes() for p in (out / "data").rglob("*.parquet")} == before
    assert not (out / STAGING).exists()
    assert not [p for p in (out / "data").iterdir() if p.name.startswith(".")]


def test_mismatched_setting_metadata_is_an_error(tiny_raw_atlas, tmp_path):
    raw = copy_atlas(tiny_raw_atlas, tmp_path / "raw")
    path = raw / layout.object_masks_name(0.5, 0.8)
    with h5py.File(path, "a") as f:
        f["metadata"].attrs["epsilon"] = 0.1
    with pytest.raises(layout.AtlasFileError, match=rf"{path.name}.*ε = 0.1"):
        export_hub(raw, tmp_path / "out", configs=["masks_eps0.5_cons0.8"])


def test_empty_table_cells_become_nulls(tiny_raw_atlas, tmp_path):
    raw = copy_atlas(tiny_raw_atlas, tmp_path / "raw")
    summary = pd.read_csv(raw / layout.SUMMARY)
    summary.loc[3, "ast_concept_fraction"] = None         # the release writes None when a group is empty
    summary.to_csv(raw / layout.SUMMARY, index=False)
    export_hub(raw, tmp_path / "out", configs=["summary"])
    ds = load(tmp_path / "out", "summary")
    assert ds[3]["ast_concept_fraction"] is None and ds[2]["ast_concept_fraction"] is not None


def test_bad_table_cell_names_the_file(tiny_raw_atlas, tmp_path):
    raw = copy_atlas(tiny_raw_atlas, tmp_path / "raw")
    path = raw / layout.target_checker_name(0.5, 0.8)
    path.write_text(path.read_text().replace(" / ", " | ", 1))
    with pytest.raises(layout.AtlasFileError, match=path.name):
        export_hub(raw, tmp_path / "out", configs=["target_checker_eps0.5_cons0.8"])


# ----------------------------------------------------------------------------- the CLI


def test_cli(tiny_raw_atlas, tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "export_hub.py"), str(tiny_raw_atlas), str(tmp_path / "out"),
           "--configs", "summary", "object_prompts"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "summary" in done.stdout and "object_prompts" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == ["object_prompts", "summary"]
    bad = subprocess.run(cmd[:2] + [str(tmp_path / "nowhere"), str(tmp_path / "out2")], capture_output=True,
                         text=True, env=os.environ.copy(), timeout=300)
    assert bad.returncode != 0 and "nowhere" in bad.stderr and "Traceback" not in bad.stderr
