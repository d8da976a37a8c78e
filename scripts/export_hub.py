#!/usr/bin/env python
"""Export a raw CSP-Atlas release folder as a Hub-ready dataset folder.

    python scripts/export_hub.py build/raw build/CSP-Atlas
    python scripts/export_hub.py build/raw build/CSP-Atlas --configs masks_eps0.5_cons0.8 summary

Writes OUT_DIR/data/<config>/*.parquet, the raw files under their release names, and README.md
(see builder_utils/export.py). Then `load_dataset("OUT_DIR", "masks_eps0.5_cons0.8")` works.
"""

from __future__ import annotations

import argparse
import sys

from builder_utils.export import DEFAULT_MAX_SHARD_SIZE, export_hub
from builder_utils.layout import AtlasFileError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw_dir", help="folder with the raw release files (13_object_masks_*.h5, 14_summary.csv, ...)")
    ap.add_argument("out_dir", help="the Hub-ready folder to write")
    ap.add_argument("--configs", nargs="+", metavar="NAME", help="export only these configs (default: all)")
    ap.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                    help=f"largest parquet shard, uncompressed (default: {DEFAULT_MAX_SHARD_SIZE})")
    args = ap.parse_args(argv)
    try:
        report = export_hub(args.raw_dir, args.out_dir, configs=args.configs, max_shard_size=args.max_shard_size)
    except (AtlasFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
