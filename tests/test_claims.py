"""The claims registry, its tolerance policy, the release rule and the notebooks' coverage of the claims.

Independent knowledge used here: the claim ids of PAPER_CLAIMS.md §1–§9 (N01–N15, S01–S04, T01–T11, M01–M12,
A01–A06, L01–L05, E01–E04, J01–J04, K01–K06), its tolerance policy (§0: counts exact, x.x % ±0.05 pp,
2 dp ±0.005, 4–6 dp ±1e-4) and its four-tier counts (19 / 6 / 18 / 63).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import nbformat
import numpy as np
import pandas as pd
import pytest

from builder_utils import claims, concepts, layout
from builder_utils.claims import (AtlasLocation, ClaimsTable, GoldenCheckFailed, InternalCheckFailed, ReleaseStatus,
                                  within_tolerance)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SPEC = REPO.parent / "shared" / "spec" / "PAPER_CLAIMS.md"

SPEC_RANGES = {"N": 15, "S": 4, "T": 11, "M": 12, "A": 6, "L": 5, "E": 4, "J": 4, "K": 6}
EXPECTED_IDS = [f"{p}{i:02d}" for p, n in SPEC_RANGES.items() for i in range(1, n + 1)]
RECORD_RE = re.compile(r"""table\.record\(\s*["']([A-Z]\d\d)["']""")


def spec_claim_ids(text: str) -> list[str]:
    """Ids of the claim headings (`**N01. …**`) in §1–§9, i.e. before the `## 10.` section."""
    body = text.split("\n## 10.", 1)[0]
    return re.findall(r"^\*\*([A-Z]\d\d)\.", body, flags=re.M)


def notebook_ids() -> dict[str, list[str]]:
    out = {}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        ids = []
        for cell in nb.cells:
            if cell.cell_type == "code":
                ids += RECORD_RE.findall(cell.source)
        out[path.name] = ids
    return out


# ----------------------------------------------------------------------------- coverage


def test_registry_holds_exactly_the_spec_ids():
    assert claims.claim_ids() == EXPECTED_IDS


@pytest.mark.skipif(not SPEC.is_file(), reason=f"spec not present at {SPEC}")
def test_spec_ids_are_the_expected_ids():
    assert spec_claim_ids(SPEC.read_text(encoding="utf-8")) == EXPECTED_IDS


def test_spec_parser_stops_at_section_10():
    text = "**N01. a**\n**N02. b**\n## 10. Descriptive\n**D01. c**\n"
    assert spec_claim_ids(text) == ["N01", "N02"]


def test_every_claim_is_recorded_in_exactly_one_notebook():
    per_notebook = notebook_ids()
    assert len(per_notebook) == 7, sorted(per_notebook)
    recorded = [i for ids in per_notebook.values() for i in ids]
    counts = pd.Series(recorded).value_counts()
    assert sorted(set(recorded)) == sorted(EXPECTED_IDS), set(recorded) ^ set(EXPECTED_IDS)
    # Each id appears in one notebook; twice only as the two branches of an if/else in one cell.
    owners = {i: [nb for nb, ids in per_notebook.items() if i in ids] for i in EXPECTED_IDS}
    assert all(len(o) == 1 for o in owners.values()), {i: o for i, o in owners.items() if len(o) != 1}
    assert counts.max() <= 2


def test_notebooks_follow_reading_order_by_claim_family():
    per_notebook = notebook_ids()
    families = {nb: "".join(sorted({i[0] for i in ids})) for nb, ids in per_notebook.items()}
    assert families == {"01_concept_space.ipynb": "N", "02_stability.ipynb": "S", "03_concept_vs_token.ipynb": "T",
                        "04_modularity.ipynb": "M", "05_atomicity_figure1.ipynb": "A",
                        "06_layer_evolution_entanglement.ipynb": "EJL", "07_token_independence.ipynb": "K"}


def test_notebooks_end_with_their_claims_table_and_keep_small_images():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert "table.finish()" in code[-3], path.name
        assert path.stat().st_size < 2_000_000, f"{path.name} is {path.stat().st_size:,} bytes"


# ----------------------------------------------------------------------------- tolerance policy


@pytest.mark.parametrize("paper,value,tol,ok", [
    (1276, 1276, "exact", True), (1276, 1277, "exact", False), (1276, 1276.0, "pp", True),
    (43, 42.9999, "4dp", False),                    # integer paper values are counts: exact whatever the claim says
    (1.7, 1.75, "pp", True), (1.7, 1.65, "pp", True), (1.7, 1.7501, "pp", False), (1.7, 1.6499, "pp", False),
    (385.6, 385.6347962382445, "1dp", True), (385.6, 385.66, "1dp", False),
    (4.87, 4.8749, "2dp", True), (4.87, 4.8751, "2dp", False),
    (0.568256, 0.568356, "4dp", True), (0.568256, 0.568357, "4dp", False),
    (True, True, "exact", True), (True, False, "exact", False), (True, 1, "exact", False),
    ("ast__Break", "ast__Break", "exact", True), ("ast__Break", "ast__Pass", "exact", False),
    (0.5, float("nan"), "4dp", False), (0.5, None, "4dp", False),
])
def test_tolerance_policy(paper, value, tol, ok):
    assert within_tolerance(paper, value, tol) is ok


def test_tolerance_on_dicts_needs_every_part():
    paper = {"AST": 1.7, "builtin": 0.4, "n": 58}
    assert within_tolerance(paper, {"AST": 1.74, "builtin": 0.36, "n": 58, "extra": 1}, "pp")
    assert not within_tolerance(paper, {"AST": 1.74, "builtin": 0.36}, "pp")          # a missing part fails
    assert not within_tolerance(paper, {"AST": 1.74, "builtin": 0.36, "n": 57}, "pp")
    assert not within_tolerance(paper, 1.7, "pp")


def test_unknown_tolerance_is_an_error():
    with pytest.raises(ValueError, match="unknown tolerance"):
        within_tolerance(1.0, 1.0, "3dp")


def _floats(v):
    if isinstance(v, dict):
        return [x for p in v.values() for x in _floats(p)]
    return [v] if isinstance(v, float) and not float(v).is_integer() else []


def test_registry_entries_are_well_formed():
    for c in claims.CLAIMS:
        assert c.tolerance in claims.TOLERANCES, c.id
        assert c.kind in ("value", "recompute", "arithmetic", "descriptive"), c.id
        assert set(c.flags) <= set(claims.FLAGS), c.id
        assert (c.paper is None) == (c.kind == "recompute"), c.id
        if _floats(c.paper):         # a non-integer printed value never gets the exact tolerance
            assert c.tolerance != "exact", c.id
    locked = {c.id for c in claims.CLAIMS if c.locked}
    # the release's own locked tests (tests/test_paper_numbers.py of the reference) are all locked here
    assert {"N01", "N02", "N03", "S01", "M01", "M02", "A01"} <= locked
    # claims the spec flags as contradicted by the paper's own data are never locked
    assert not locked & {"T02", "T06", "T07", "M05", "A03"}


def test_paper_tables_hold_the_spec_values():
    t01, t08 = claims.CLAIMS_BY_ID["T01"].paper, claims.CLAIMS_BY_ID["T08"].paper
    assert len(t01) == 18 and t01["0.001/0.5 AST"] == 3.4 and t01["0.001/0.5 builtin"] == 1.1
    assert len(t08) == 24 and t08["modular L5"] == 30.4 and t08["builtin L1"] == 0.0
    assert claims.CLAIMS_BY_ID["L01"].paper["builtin L5"] == 53.8


# ----------------------------------------------------------------------------- the table


def _atlas(release: bool) -> AtlasLocation:
    return AtlasLocation(Path("/nonexistent"), "test", ReleaseStatus(release, "test", None, None, None))


def test_release_table_asserts_locked_claims_only():
    table = ClaimsTable(_atlas(True), "N")
    assert table.record("N01", 43)["status"].iloc[0] == "match"
    with pytest.raises(GoldenCheckFailed, match="N04"):
        table.record("N04", 1275)
    assert table.rows["N04"]["status"].startswith("MISMATCH (locked)")     # the row is kept for the table
    assert table.record("N09", 2000)["status"].iloc[0].startswith("MISMATCH")  # not locked: shown, not raised


def test_release_table_uses_the_tolerance():
    table = ClaimsTable(_atlas(True), "T")
    value = dict(claims.CLAIMS_BY_ID["T01"].paper)
    value["0.5/0.8 AST"] += 0.049
    assert table.record("T01", value)["status"].iloc[0] == "match"
    value = dict(claims.CLAIMS_BY_ID["T08"].paper)
    value["modular L5"] += 0.051
    with pytest.raises(GoldenCheckFailed, match="T08"):
        table.record("T08", value)


def test_other_atlases_are_comparison_only_but_internal_checks_bite():
    table = ClaimsTable(_atlas(False), "N")
    assert table.record("N04", 24)["status"].iloc[0] == "comparison only · flag F3"
    assert table.check_internal("fine", True)
    with pytest.raises(InternalCheckFailed, match="summary = mean of rows"):
        table.check_internal("summary = mean of rows", False)
    assert table.internal()["result"].tolist() == ["pass", "FAIL"]


def test_arithmetic_claims_are_checked_on_every_atlas():
    table = ClaimsTable(_atlas(False), "M")
    assert table.record("M08", {"AST": 4.87, "builtin": 7.13})["status"].iloc[0] == "arithmetic: match"
    with pytest.raises(InternalCheckFailed, match="M09"):
        table.record("M09", {"P < 1e-7": False})


def test_flags_with_must_bite_are_asserted():
    table = ClaimsTable(_atlas(False), "T")
    assert table.flag("F6", "T02", bites=True, evidence="3.09×", must_bite=True)["verdict"].iloc[0] == "bites"
    table.flag("F8", "T07", bites=False, evidence="not here")
    with pytest.raises(InternalCheckFailed, match="F6"):
        table.flag("F6", "T02", bites=False, evidence="x", must_bite=True)
    with pytest.raises(KeyError):
        table.flag("F99", "T02", bites=True, evidence="x")


def test_table_bookkeeping():
    table = ClaimsTable(_atlas(False), "K")
    with pytest.raises(KeyError, match="does not belong"):
        table.record("N01", 43)
    for cid in claims.claim_ids("K")[:-1]:
        table.record(cid, None, status="n/a (test)")
    with pytest.raises(KeyError, match="twice"):
        table.record("K01", 1)
    with pytest.raises(InternalCheckFailed, match="K06"):
        table.finish()
    table.record("K06", None)
    full = table.finish()
    assert full.index.tolist() == claims.claim_ids("K")
    assert list(full.columns) == ["statement", "paper value", "this atlas", "status"]


def test_paper_value_override_hook(monkeypatch):
    monkeypatch.setenv(claims.ENV_OVERRIDES, json.dumps({"N01": 42}))
    assert claims.get_claim("N01").paper == 42
    with pytest.raises(GoldenCheckFailed):
        ClaimsTable(_atlas(True), "N").record("N01", 43)
    monkeypatch.setenv(claims.ENV_OVERRIDES, json.dumps({"X99": 1}))
    with pytest.raises(ValueError, match="unknown ids"):
        claims.get_claim("N01")


# ----------------------------------------------------------------------------- claim glue


def test_four_tiers_of_the_release_inventory():
    assert claims.four_tiers(concepts.concept_keys()) == {"tokenless AST": 19, "modular": 6, "non-modular AST": 18,
                                                          "builtins": 63, "total": 106}


def _rows(spec):
    """Stage-14-like rows from (target, layer, co, sh)."""
    df = pd.DataFrame(spec, columns=["target", "layer", "concept_only", "shared"])
    df["concept_type"] = df["target"].map(concepts.concept_type)
    df["A_size"] = df["concept_only"] + df["shared"]
    return df


def test_pooled_glue_on_a_planted_example():
    rows = _rows([("ast__Break", 5, 3, 1), ("ast__For", 5, 1, 3), ("ast__For", 1, 0, 4), ("builtin__len", 5, 0, 4)])
    grid = claims.pooled_grid({(0.5, 0.8): rows})
    assert grid.loc[(0.5, 0.8), "AST"] == pytest.approx(100 * 4 / 12)
    assert grid.loc[(0.5, 0.8), "builtin"] == 0.0
    assert claims.grid_claim_value(grid) == {"0.5/0.8 AST": pytest.approx(33.333333), "0.5/0.8 builtin": 0.0}
    sums = claims.group_sums(rows, 5)
    assert sums.loc["modular", ["co", "sh", "size"]].tolist() == [3, 1, 4]
    assert sums.loc["non-modular", "concept %"] == 25.0
    profile = claims.layer_profile(rows)
    assert profile.loc["non-modular", 1] == 0.0 and np.isnan(profile.loc["modular", 1])
    n, ratio = claims.ratio_count(pd.DataFrame({"AST": [8.0, 2.0], "builtin": [1.0, 1.0]}))
    assert n == 1 and ratio.tolist() == [8.0, 2.0]


# ----------------------------------------------------------------------------- the release rule


def _release_shaped(root: Path, *, n_pairs: int = claims.RELEASE_PAIRS,
                    n_prompts: int = claims.RELEASE_OBJECT_PROMPTS) -> Path:
    """Just enough of a release folder for the rule: the reference mask file and the 11A parquet."""
    root.mkdir(parents=True, exist_ok=True)
    keys = sorted(f"N{i:04d}__b" for i in range(n_pairs))
    pairs = layout.MaskStack(keys, np.zeros((n_pairs, 1, 8), bool))
    uni = layout.MaskStack(["ast__N0000", "builtin__b"], np.zeros((2, 1, 8), bool))
    layout.write_object_masks(root / layout.object_masks_name(*layout.REFERENCE_SETTING),
                              layout.ObjectMasks(0.5, 0.8, pairs, uni, ["N0000"], ["b"]))
    layout.write_table(pd.DataFrame({"ast_node": ["N0000"] * n_prompts}), root / layout.OBJECT_PROMPTS)
    return root


def _write_manifest(root: Path, model: dict) -> None:
    (root / layout.MANIFEST).write_text(json.dumps({"artifacts": [], "build": {"model": model}}))


def _write_activation_model(root: Path, model_id: str) -> None:
    acts = layout.Activations(["A__b"], np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.int32),
                              np.array([50]), {"model_id": model_id})
    layout.write_activations(root / layout.OBJECT_ACTIVATIONS, acts)


@pytest.fixture(scope="module")
def release_shaped(tmp_path_factory) -> Path:
    return _release_shaped(tmp_path_factory.mktemp("release") / "atlas")


@pytest.fixture
def release_copy(release_shaped, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(release_shaped, tmp_path / "atlas"))


def test_release_counts_without_provenance_need_the_env_override(release_copy, monkeypatch):
    monkeypatch.delenv(claims.ENV_RELEASE, raising=False)
    status = claims.release_status(release_copy)
    assert (status.release, status.n_pairs, status.n_object_prompts) == (False, 1276, 63800)
    assert claims.ENV_RELEASE in status.reason
    monkeypatch.setenv(claims.ENV_RELEASE, "1")
    assert claims.is_release(release_copy)
    monkeypatch.setenv(claims.ENV_RELEASE, "0")
    assert not claims.is_release(release_copy)


def test_manifest_provenance_decides(release_copy, monkeypatch):
    monkeypatch.delenv(claims.ENV_RELEASE, raising=False)
    _write_manifest(release_copy, {"source": "hub", "id": claims.RELEASE_MODEL, "revision": "abc"})
    assert claims.is_release(release_copy)
    _write_manifest(release_copy, {"source": "local", "path": "model"})
    monkeypatch.setenv(claims.ENV_RELEASE, "1")            # never overrides a record naming another model
    status = claims.release_status(release_copy)
    assert not status.release and "local model" in status.reason


def test_activation_metadata_is_provenance_when_there_is_no_manifest(release_copy, monkeypatch):
    monkeypatch.delenv(claims.ENV_RELEASE, raising=False)
    _write_activation_model(release_copy, claims.RELEASE_MODEL)
    assert claims.is_release(release_copy)
    _write_activation_model(release_copy, "synthetic/planted-fixture")
    assert not claims.is_release(release_copy)
    _write_manifest(release_copy, {"source": "hub", "id": claims.RELEASE_MODEL})   # the manifest comes first
    assert claims.is_release(release_copy)


@pytest.mark.parametrize("n_pairs,n_prompts", [(1275, 63800), (1276, 63750)])
def test_release_needs_both_counts(tmp_path, monkeypatch, n_pairs, n_prompts):
    monkeypatch.setenv(claims.ENV_RELEASE, "1")
    root = _release_shaped(tmp_path / "atlas", n_pairs=n_pairs, n_prompts=n_prompts)
    _write_manifest(root, {"source": "hub", "id": claims.RELEASE_MODEL})
    status = claims.release_status(root)
    assert not status.release and f"{n_pairs} pairs / {n_prompts} object prompts" in status.reason


def test_corrupt_provenance_is_a_clear_error(release_copy):
    (release_copy / layout.MANIFEST).write_text("{not json")
    with pytest.raises(layout.AtlasFileError, match=layout.MANIFEST):
        claims.release_status(release_copy)


# ----------------------------------------------------------------------------- locating the atlas


def test_locate_atlas_uses_the_env_root(tiny_raw_atlas, monkeypatch, capsys):
    monkeypatch.setenv(claims.ENV_DATA_ROOT, str(tiny_raw_atlas))
    atlas = claims.locate_atlas()
    assert atlas.root == tiny_raw_atlas.resolve() and not atlas.release and atlas.export_dir is None
    assert claims.ENV_DATA_ROOT in atlas.source
    assert "comparison only" in capsys.readouterr().out
    assert atlas.legacy_universals().name == layout.object_masks_name(*layout.TOKEN_CHECKER_SETTING)


def test_locate_atlas_rejects_a_bad_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv(claims.ENV_DATA_ROOT, str(tmp_path / "missing"))
    with pytest.raises(layout.AtlasFileError, match="does not exist"):
        claims.locate_atlas(verbose=False)
    monkeypatch.setenv(claims.ENV_DATA_ROOT, str(tmp_path))
    with pytest.raises(layout.AtlasFileError, match="reference mask file is missing"):
        claims.locate_atlas(verbose=False)


def test_locate_atlas_reads_an_h5_model_id_from_the_legacy_file(tiny_raw_atlas, tmp_path):
    import shutil

    root = Path(shutil.copytree(tiny_raw_atlas, tmp_path / "atlas"))
    (root / layout.MANIFEST).unlink(missing_ok=True)
    (root / layout.OBJECT_ACTIVATIONS).unlink(missing_ok=True)
    with h5py.File(root / claims.LEGACY_UNIVERSALS, "w") as f:
        f.create_group("metadata").attrs["model_id"] = claims.RELEASE_MODEL
    assert claims.provenance_model(root) == (claims.RELEASE_MODEL, f"{claims.LEGACY_UNIVERSALS} /metadata")


def test_notebooks_are_stored_executed_without_errors():
    """The committed notebooks carry their outputs (re-execute: see builder_utils/claims.py)."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in (c for c in nb.cells if c.cell_type == "code"):
            assert cell.execution_count is not None, f"{path.name}: a cell was never executed"
            assert not any(o.output_type == "error" for o in cell.outputs), f"{path.name}: stored error"
            for o in cell.outputs:
                png = o.get("data", {}).get("image/png", "")
                assert len(png) < 200_000, f"{path.name}: a {len(png):,}-character PNG"
