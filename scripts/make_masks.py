#!/usr/bin/env python
"""Stage 13: binarise the stage-12 activations and marginalise them into universal masks.

    python scripts/make_masks.py --data-dir build/raw
    python scripts/make_masks.py --data-dir build/raw --only object --setting 0.5 0.8 --force

Reads, from the data folder, and writes there, atomically:
  12_object_activations.h5         -> 13_object_masks_eps{E}_cons{C}.h5   (pair + universal masks, Jaccard at L4)
  12_checker_activations.h5        -> 13_checker_masks_eps{E}_cons{C}.h5  (11B checker masks)
  12_token_checker_activations.h5  -> token_checker_masks.h5              (5A masks, ε=0.001, C=0.8 only)

mask = (activation_sum / n > ε) & (firing_count / n >= C), in float32 (ALGORITHMS.md §6).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import layout  # noqa: E402
from builder_utils.masks import (DEFAULT_WRITERS, build_checker_masks, build_object_masks,  # noqa: E402
                                 build_token_checker_masks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path,
                    help="folder holding the stage-12 activation files; the mask files are written there too")
    ap.add_argument("--only", choices=["object", "checker", "token-checker"], default=None,
                    help="build one kind of mask file only (default: all three)")
    ap.add_argument("--setting", nargs=2, type=float, action="append", metavar=("EPSILON", "CONSISTENCY"),
                    help="an (ε, C) setting to build; repeat for several (default: the release's 3 x 3 grid, "
                         "ε in 0.001 0.1 0.5, C in 0.2 0.5 0.8). Does not apply to the token-checker file, "
                         "which is always ε=0.001, C=0.8")
    ap.add_argument("--force", action="store_true",
                    help="rebuild every file; by default a file newer than its activation file is kept "
                         "(an interrupted run resumes)")
    ap.add_argument("--writers", type=int, default=DEFAULT_WRITERS,
                    help="processes writing the mask files (default: %(default)s)")
    args = ap.parse_args(argv)

    settings = [tuple(s) for s in args.setting] if args.setting else list(layout.SETTINGS)
    resume = not args.force
    written = []
    if args.only in (None, "object"):
        written += build_object_masks(args.data_dir, settings, resume=resume, writers=args.writers)
    if args.only in (None, "checker"):
        written += build_checker_masks(args.data_dir, settings, resume=resume, writers=args.writers)
    if args.only in (None, "token-checker"):
        written.append(build_token_checker_masks(args.data_dir, resume=resume))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except layout.AtlasFileError as exc:       # a missing or malformed input file: say which, no traceback
        sys.exit(f"error: {exc}")
