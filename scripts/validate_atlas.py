#!/usr/bin/env python
"""Validate a CSP-Atlas folder: complete, internally consistent, and what the code produces.

    python scripts/validate_atlas.py build/CSP-Atlas     # an exported folder (what `make validate` checks)
    python scripts/validate_atlas.py build/raw           # a raw release folder
    python scripts/validate_atlas.py ~/Downloads/CSP-Atlas   # the Hub release as downloaded

Prints one line per check (pass / fail / skipped, with the first differences of every
failure) and exits 1 if any check failed, 0 otherwise. See builder_utils/validate.py for
what each check compares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import layout  # noqa: E402
from builder_utils.validate import validate_atlas  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("atlas_dir", type=Path, help="the atlas folder (raw release files, optionally with data/)")
    ap.add_argument("--no-parquet", action="store_true", help="skip comparing the data/<config> parquet files")
    args = ap.parse_args(argv)

    root = args.atlas_dir
    if not root.is_dir():
        print(f"error: {root}: atlas folder not found", file=sys.stderr)
        return 1
    if not any((root / n).is_file() for n in layout.release_file_names()):
        inner = [root / s for s in ("CSP-Atlas", "raw") if (root / s).is_dir()]
        hint = f" (did you mean {inner[0]}?)" if inner else ""
        print(f"error: {root}: no CSP-Atlas release files in this folder{hint}", file=sys.stderr)
        return 1
    report = validate_atlas(root, parquet=not args.no_parquet)
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
