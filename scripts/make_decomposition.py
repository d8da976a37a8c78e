#!/usr/bin/env python
"""Stage 14: split each universal circuit into concept-only / shared / token-only channels.

    python scripts/make_decomposition.py --data-dir build/raw
    python scripts/make_decomposition.py --data-dir build/raw --pooled

Reads 13_object_masks_eps{E}_cons{C}.h5 (universal masks, A) and 13_checker_masks_eps{E}_cons{C}.h5
(checker masks, B) for each setting and writes, atomically, into the same folder:
  14_target_checker_eps{E}_cons{C}.csv   one row per keyword concept, cells "co / sh / to" per layer
  14_summary.csv                         one row per setting: mean-of-rows concept/token fractions (ALGORITHMS.md §7)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import layout  # noqa: E402
from builder_utils.decomposition import build_decomposition_tables, decompose, pooled_concept_fraction  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path,
                    help="folder holding the stage-13 mask files; the CSVs are written there too")
    ap.add_argument("--setting", nargs=2, type=float, action="append", metavar=("EPSILON", "CONSISTENCY"),
                    help="an (ε, C) setting to compare; repeat for several (default: the release's 3 x 3 grid). "
                         "14_summary.csv gets one row per setting given")
    ap.add_argument("--pooled", action="store_true",
                    help="also print the POOLED concept fraction Σco / Σ(co+sh) per setting for AST and builtin "
                         "concepts (the write-up's aggregation; 14_summary.csv holds the mean of rows instead)")
    args = ap.parse_args(argv)

    settings = [tuple(s) for s in args.setting] if args.setting else list(layout.SETTINGS)
    summary = build_decomposition_tables(args.data_dir, settings)
    print(summary.to_string(index=False))
    if args.pooled:
        print("\npooled concept fraction (Σco / Σ(co+sh)):")
        for e, c in settings:
            uni = layout.read_object_masks(args.data_dir / layout.object_masks_name(e, c), pairs=False).universals
            chk = layout.read_checker_masks(args.data_dir / layout.checker_masks_name(e, c)).masks
            rows = decompose(uni, chk)
            print(f"  eps={e} cons={c}: ast {pooled_concept_fraction(rows, 'ast'):.4f}  "
                  f"builtin {pooled_concept_fraction(rows, 'builtin'):.4f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except layout.AtlasFileError as exc:       # a missing or malformed input file: say which, no traceback
        sys.exit(f"error: {exc}")
