"""The release layout module: names, naming rules, atomic writes, and the analysis loaders."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from builder_utils import concepts, layout
from builder_utils.export import export_hub


def test_setting_tags_are_the_release_spelling():
    # File names from the release (DATASET_CARD.md, ALGORITHMS.md §6): Python float repr.
    assert layout.object_masks_name(0.001, 0.2) == "13_object_masks_eps0.001_cons0.2.h5"
    assert layout.checker_masks_name(0.5, 0.8) == "13_checker_masks_eps0.5_cons0.8.h5"
    assert layout.target_checker_name(0.1, 0.5) == "14_target_checker_eps0.1_cons0.5.csv"
    assert [layout.parse_setting_tag(layout.setting_tag(e, c)) for e, c in layout.SETTINGS] == list(layout.SETTINGS)
    assert layout.SETTINGS[0] == (0.001, 0.2) and layout.SETTINGS[-1] == (0.5, 0.8)    # ε-major
    with pytest.raises(ValueError, match="eps"):
        layout.parse_setting_tag("epsilon0.5")


def test_concept_naming_splits_on_the_first_double_underscore():
    assert concepts.split_pair_key("Assert___isolated_") == ("Assert", "_isolated_")
    assert concepts.pair_key("For", "list") == "For__list"
    assert concepts.split_concept_key("builtin___isolated_") == ("builtin", "_isolated_")
    assert len(concepts.concept_keys()) == 106
    assert len(concepts.KEYWORD_MAP) == 58 and len(concepts.TOKENLESS) == 48
    with pytest.raises(ValueError, match="pair key"):
        concepts.split_pair_key("For")
    with pytest.raises(ValueError, match="concept key"):
        concepts.split_concept_key("loop__For")


def test_atomic_output_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "14_summary.csv"
    with pytest.raises(RuntimeError):
        with layout.atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with layout.atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".12_object_activations.h5.tmp-123").write_text("x")
    (tmp_path / "14_summary.csv").write_text("kept")
    removed = layout.remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".12_object_activations.h5.tmp-123"]
    assert [p.name for p in tmp_path.iterdir()] == ["14_summary.csv"]


def test_loaders_read_the_same_masks_from_raw_files_and_from_the_export(tiny_raw_atlas, tmp_path):
    with h5py.File(tiny_raw_atlas / layout.object_masks_name(0.5, 0.8)) as f:          # independent reader
        group = f["universal_masks"]
        expected = {name: {l: set(np.flatnonzero(group[f"layer_{l}/{name}"][()]).tolist()) for l in range(8)}
                    for name in group["layer_0"]}
    assert layout.load_universal_masks(tiny_raw_atlas, 0.5, 0.8) == expected

    export_hub(tiny_raw_atlas, tmp_path / "hub", configs=["masks_eps0.5_cons0.8"])
    (tmp_path / "parquet_only").mkdir()
    (tmp_path / "hub" / "data").rename(tmp_path / "parquet_only" / "data")   # no raw file: must use the parquet
    from_parquet = layout.load_universal_mask_stack(tmp_path / "parquet_only", 0.5, 0.8)
    from_raw = layout.load_universal_mask_stack(tiny_raw_atlas, 0.5, 0.8)
    assert from_parquet.keys == from_raw.keys == sorted(expected)
    np.testing.assert_array_equal(from_parquet.masks, from_raw.masks)
    assert from_parquet.as_sets() == expected


def test_loader_names_the_folder_when_neither_source_exists(tmp_path):
    with pytest.raises(layout.AtlasFileError, match="masks_eps0.5_cons0.8"):
        layout.load_universal_mask_stack(tmp_path, 0.5, 0.8)


def test_a_missing_layer_is_named(tiny_raw_atlas, tmp_path):
    path = tmp_path / layout.object_masks_name(0.5, 0.8)
    path.write_bytes((tiny_raw_atlas / path.name).read_bytes())
    with h5py.File(path, "a") as f:
        del f["universal_masks/layer_3"]
    with pytest.raises(layout.AtlasFileError, match=r"layer_3"):
        layout.read_object_masks(path)


# ----------------------------------------------------------------------------- packed masks


@pytest.mark.parametrize("width", [1, 8, 63, 64, 65, 130, 2048])
def test_pack_bits_round_trips_and_puts_channel_c_at_bit_c_mod_64(width):
    rng = np.random.default_rng(width)
    m = rng.random((3, 2, width)) < 0.4
    words = layout.pack_bits(m)
    assert words.dtype == np.uint64 and words.shape == (3, 2, layout.n_words(width))
    np.testing.assert_array_equal(layout.unpack_bits(words, width), m)
    one = np.zeros(width, bool)
    one[width - 1] = True
    expected = np.zeros(layout.n_words(width), np.uint64)
    expected[(width - 1) // 64] = np.uint64(1) << np.uint64((width - 1) % 64)
    np.testing.assert_array_equal(layout.pack_bits(one), expected)


def test_mask_stack_holds_either_form_and_derives_the_other():
    rng = np.random.default_rng(0)
    m = rng.random((4, 2, 100)) < 0.5
    keys = ["d", "b", "a", "c"]                      # unsorted: both forms are reordered alike
    from_bools, from_words = layout.MaskStack(keys, m), layout.MaskStack(keys, words=layout.pack_bits(m), width=100)
    order = [2, 1, 3, 0]
    for stack in (from_bools, from_words):
        assert stack.keys == ["a", "b", "c", "d"] and (stack.n_layers, stack.width) == (2, 100)
        np.testing.assert_array_equal(stack.masks, m[order])
        np.testing.assert_array_equal(stack.words, layout.pack_bits(m[order]))
    with pytest.raises(ValueError, match="read-only"):
        from_words.masks[0, 0, 0] = True               # booleans unpacked from words cannot drift from them
    from_bools.masks[0, 0, 0] = not from_bools.masks[0, 0, 0]          # the boolean form is the one it holds
    assert from_bools.words[0, 0, 0] != from_words.words[0, 0, 0]
    assert pickle.loads(pickle.dumps(from_words))._masks is None       # pickles only the packed words
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(from_words)).masks, m[order])
    for bad in (dict(masks=m, words=layout.pack_bits(m), width=100), dict(),
                dict(words=layout.pack_bits(m), width=200), dict(words=layout.pack_bits(m).view(np.int64), width=100)):
        with pytest.raises(ValueError):
            layout.MaskStack(keys, **bad)


@pytest.mark.parametrize("data", [
    np.zeros(2048, bool), np.arange(2048) % 7 == 0, np.linspace(0, 3, 2048, dtype=np.float32),
    np.arange(2048, dtype=np.int32), np.zeros(5, np.float32),
    np.random.default_rng(1).random(1_000_000) < 0.5,             # longer than one chunk: HDF5 chunks and filters it
], ids=["zeros", "bools", "float32", "int32", "short", "long"])
def test_vectors_are_written_as_create_dataset_writes_them(data, tmp_path):
    ours, h5pys = tmp_path / "ours.h5", tmp_path / "h5py.h5"
    rows = np.stack([data, data, data[::-1]])                      # the second row deflated once, from memory
    with h5py.File(ours, "w", track_order=False) as f:
        layout._write_vectors(f, ["a", "b", "c"], rows)
    with h5py.File(h5pys, "w", track_order=False) as f:
        for name, row in zip("abc", rows):
            f.create_dataset(name, data=row, compression="gzip", track_times=False)
    with h5py.File(ours) as f:
        for name, row in zip("abc", rows):
            assert f[name].compression == "gzip" and f[name].compression_opts == 4
            np.testing.assert_array_equal(f[name][()], row)
    assert ours.read_bytes() == h5pys.read_bytes()
