#!/usr/bin/env python
"""Write the analysis tables of a release folder: relaxed modularity and token independence.

    python scripts/make_analyses.py --data-dir build/raw
    python scripts/make_analyses.py --data-dir build/raw --only modularity --summation reference

Writes, atomically, into the data folder:
  relaxed_modularity_scores.csv, relaxed_modularity_detail.csv      (from 13_object_masks_eps{E}_cons{C}.h5)
  token_independence_detail.csv, token_independence_summary.csv,
  token_independence_no_keyword.csv                                 (13_object_masks_eps0.001_cons0.8.h5
                                                                     vs token_checker_masks.h5)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import layout  # noqa: E402
from builder_utils.modularity import SUMMATION_MODES, build_modularity_tables  # noqa: E402
from builder_utils.token_independence import build_token_independence_tables, group_means  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path,
                    help="folder holding the raw release files (13_object_masks_*.h5, token_checker_masks.h5); "
                         "the CSVs are written there too")
    ap.add_argument("--only", choices=["modularity", "token-independence"], default=None,
                    help="run one analysis only (default: both)")
    ap.add_argument("--epsilon", type=float, default=layout.REFERENCE_SETTING[0],
                    help="ε of the object masks used for relaxed modularity (default: %(default)s, the paper's)")
    ap.add_argument("--consistency", type=float, default=layout.REFERENCE_SETTING[1],
                    help="consistency C of the object masks used for relaxed modularity (default: %(default)s)")
    ap.add_argument("--summation", choices=SUMMATION_MODES, default="sorted",
                    help="float32 summation order of the trimmed means: 'sorted' (default) makes equal "
                         "neighbour similarities tie exactly; 'reference' reproduces the release script bit for "
                         "bit (row order at p=0), which can split such a tie by one ulp")
    args = ap.parse_args(argv)

    if args.only in (None, "modularity"):
        scores, _ = build_modularity_tables(args.data_dir, args.epsilon, args.consistency, args.summation)
        print(f"relaxed modularity (ε={args.epsilon}, C={args.consistency}, {len(scores)} concepts) -> "
              f"{layout.MODULARITY_SCORES}, {layout.MODULARITY_DETAIL}")
        print(scores.head(10).to_string())
    if args.only in (None, "token-independence"):
        detail, summary, no_keyword = build_token_independence_tables(args.data_dir)
        print(f"token independence ({summary.shape[0]} concepts x {detail['layer'].nunique()} layers, "
              f"{len(no_keyword)} without keyword) -> {layout.TOKEN_INDEPENDENCE_DETAIL}, "
              f"{layout.TOKEN_INDEPENDENCE_SUMMARY}, {layout.TOKEN_INDEPENDENCE_NO_KEYWORD}")
        print(group_means(detail).round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
