#!/usr/bin/env python
"""Build a complete CSP-Atlas: prompts → activations → masks → decomposition → analyses → Hub export.

    python scripts/build_atlas.py                      # the mini preset into build/ (what `make atlas` runs)
    python scripts/build_atlas.py --preset tiny --out /tmp/tiny
    python scripts/build_atlas.py --preset paper --device cuda   # needs the Hub and a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils.layout import AtlasFileError  # noqa: E402
from builder_utils.masks import DEFAULT_WRITERS  # noqa: E402
from builder_utils.pipeline import PRESETS, build_atlas, get_preset, summary_table  # noqa: E402

# Bad input (a missing or damaged file, an unknown preset, an unwritable folder) gets one line, not a traceback.
USER_ERRORS = (AtlasFileError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini",
                    help=f"one of {', '.join(sorted(PRESETS))}. tiny: seconds, a handful of concepts (tests); mini: all 106 "
                         "concepts on the offline mini model (default); paper: openai/circuit-sparsity with the "
                         "release's procedure")
    ap.add_argument("--out", default="build", type=Path,
                    help="output folder; gets raw/, model/ and the Hub-ready CSP-Atlas/ (default: build)")
    ap.add_argument("--force", action="store_true", help="rebuild every stage even if its outputs are current")
    ap.add_argument("--model", default=None, help="override the preset's model (Hub id or local path)")
    ap.add_argument("--device", default=None, help="torch device (default: the preset's, cpu for tiny/mini)")
    ap.add_argument("--no-export", action="store_true", help="stop after the raw release files")
    ap.add_argument("--writers", type=int, default=DEFAULT_WRITERS,
                    help="processes writing the stage-13 mask files (default: %(default)s)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    try:
        get_preset(args.preset)
        result = build_atlas(args.preset, args.out, force=args.force, model=args.model, device=args.device,
                             export=not args.no_export, writers=args.writers)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    built = [s.name for s in result.stages if not s.skipped]
    print()
    print(f"Built preset '{result.preset}' in {time.perf_counter() - t0:.1f} s "
          f"({len(built)} stage(s) run, {len(result.stages) - len(built)} up to date).")
    print(f"  raw release files : {result.raw_dir}")
    if not args.no_export:
        print(f"  Hub-ready export  : {result.export_dir}")
    print()
    print(summary_table(result.raw_dir).to_string(index=False))
    if not args.no_export:
        print()
        print("Load it:")
        print(f'  from datasets import load_dataset')
        print(f'  ds = load_dataset("{result.export_dir}", "masks_eps0.5_cons0.8", split="train")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
