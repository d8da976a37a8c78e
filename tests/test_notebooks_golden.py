"""The golden-check path of the notebooks, on a release-size synthetic atlas.

The fixture generator writes a release-layout atlas with the release's counts (1,276 pairs, 63,800 object
prompts, 2,848 + 2,861 checker prompts, the 43 + 63 inventory). Its activations' provenance is flipped to
`openai/circuit-sparsity`, so `claims.is_release` takes it for the release and notebook 01 (the counts)
asserts every locked claim. The fixture is narrow (width 32, not 2,048), so the N15 width is overridden
through the documented test hook; everything else must match the paper as is. A deliberately wrong paper
value must then make the notebook fail.

Slow (the release-size fixture has ~100k HDF5 datasets): marked `slow`.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from builder_utils import claims, fixtures, layout

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_concept_space.ipynb"
WIDTH = 32


@pytest.fixture(scope="module")
def release_fixture(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden") / "CSP-Atlas"
    fixtures.write_fixture_atlas(root, width=WIDTH, n_prompts=50, seed=0)
    with h5py.File(root / layout.OBJECT_ACTIVATIONS, "r+") as f:          # flip the provenance to the release
        f[layout.G_METADATA].attrs["model_id"] = claims.RELEASE_MODEL
    return root


PROBE = "import json as _json; print('STATUSES=' + _json.dumps({k: r['status'] for k, r in table.rows.items()}))"


def _execute(monkeypatch, root: Path, overrides: dict) -> dict[str, str]:
    """Run notebook 01 on `root` (plus a probe cell); return the status of every claim it recorded."""
    monkeypatch.setenv(claims.ENV_DATA_ROOT, str(root))
    monkeypatch.setenv(claims.ENV_OVERRIDES, json.dumps(overrides))
    monkeypatch.delenv(claims.ENV_RELEASE, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    statuses = json.loads(text.split("STATUSES=", 1)[1])
    assert "GOLDEN CHECKS ON" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    return statuses


def test_fixture_is_taken_for_the_release(release_fixture):
    status = claims.release_status(release_fixture)
    assert status.release, status.reason
    assert (status.n_pairs, status.n_object_prompts, status.model_id) == (1276, 63800, claims.RELEASE_MODEL)


def test_golden_checks_pass_on_a_release_atlas(release_fixture, monkeypatch):
    statuses = _execute(monkeypatch, release_fixture, {"N15": {"layers": 8, "width": WIDTH}})
    assert sorted(statuses) == claims.claim_ids("N")
    locked = [c.id for c in claims.CLAIMS if c.id.startswith("N") and c.locked]
    assert all(statuses[i].startswith("match") for i in locked), {i: statuses[i] for i in locked}
    # the unlocked counts are compared too (the fixture mimics the card's 2,848 / 2,861)
    assert statuses["N09"].startswith("match") and statuses["N10"].startswith("match")
    assert not any("comparison only" in s for s in statuses.values())


def test_a_wrong_locked_value_fails_the_notebook(release_fixture, monkeypatch):
    with pytest.raises(CellExecutionError) as err:
        _execute(monkeypatch, release_fixture, {"N04": 1275, "N15": {"layers": 8, "width": WIDTH}})
    assert "GoldenCheckFailed" in str(err.value) and "N04" in str(err.value)


def test_without_release_provenance_nothing_is_compared(release_fixture, monkeypatch):
    """The same wrong value on an atlas that is not the release does not fail: comparison only."""
    monkeypatch.setenv(claims.ENV_RELEASE, "0")
    monkeypatch.setenv(claims.ENV_OVERRIDES, json.dumps({"N04": 1275}))
    atlas = claims.AtlasLocation(release_fixture, "test", claims.release_status(release_fixture))
    assert not atlas.release
    assert claims.ClaimsTable(atlas, "N").record("N04", 1276)["status"].iloc[0].startswith("comparison only")
