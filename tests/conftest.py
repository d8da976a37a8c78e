"""Shared pytest fixtures.

Before anything imports `datasets`, point every Hugging Face cache at a throwaway folder
and switch the libraries offline: no test touches the network or ~/.cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HF_HOME = Path(tempfile.mkdtemp(prefix="csp-atlas-hf-"))
os.environ.update({
    "HF_HOME": str(_HF_HOME),
    "HF_DATASETS_CACHE": str(_HF_HOME / "datasets"),
    "HF_HUB_CACHE": str(_HF_HOME / "hub"),
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
})


def pytest_unconfigure(config):
    shutil.rmtree(_HF_HOME, ignore_errors=True)


# ----------------------------------------------------------------------------- a tiny raw atlas

from builder_utils.fixtures import write_fixture_atlas  # noqa: E402  (after the environment is set)

TINY_ATLAS = {"n_pairs": 8, "width": 32, "n_prompts": 10, "seed": 0}


@pytest.fixture(scope="session")
def tiny_raw_atlas(tmp_path_factory) -> Path:
    """A complete small release-layout atlas (8 pairs, all 58 keyword concepts, width 32, 8 layers).

    Shared by the whole session: treat it as read-only (copy it to damage it).
    """
    root = tmp_path_factory.mktemp("tiny_atlas") / "raw"
    write_fixture_atlas(root, **TINY_ATLAS)
    return root
