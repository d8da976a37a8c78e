#!/usr/bin/env python
"""Stage 12: run the prompts through the model and write the raw activation files (ALGORITHMS.md §5).

    python scripts/extract_activations.py --data-dir build/raw --model build/model          # offline mini model
    python scripts/extract_activations.py --data-dir build/raw --position reference \\
        --device cuda --dtype float16                                                       # the release's run

Reads prompt tables from the data folder and writes next to them, atomically:
  11A_object_prompts.parquet     -> 12_object_activations.h5          (units: ast_node x builtin_obj pairs)
  11B_checker_prompts.parquet    -> 12_checker_activations.h5         (units: checker objects)
  token_checker_prompts.parquet  -> 12_token_checker_activations.h5   (units: 5A token-checker objects)

Each file holds, per unit, layer and `.mlp` output channel, Σ|act| (float32), the count of act != 0
(int32) and n_prompts. An interrupted run leaves `<output>.checkpoint.npz` and resumes from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import layout  # noqa: E402
from builder_utils.activations import (CHECKER_UNIT_COLUMNS, DEFAULT_BATCH_SIZE, OBJECT_UNIT_COLUMNS,  # noqa: E402
                                       POSITIONS, extract_to_file)
from builder_utils.models import PAPER_MODEL_ID, load_model_and_tokenizer  # noqa: E402

PROMPT_SETS = {  # name -> (prompt table, unit columns, output file)
    "object": (layout.OBJECT_PROMPTS, OBJECT_UNIT_COLUMNS, layout.OBJECT_ACTIVATIONS),
    "checker": (layout.CHECKER_PROMPTS, CHECKER_UNIT_COLUMNS, layout.CHECKER_ACTIVATIONS),
    "token-checker": (layout.TOKEN_CHECKER_PROMPTS, CHECKER_UNIT_COLUMNS, layout.TOKEN_CHECKER_ACTIVATIONS),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path,
                    help="folder holding the prompt tables; the activation files are written there too")
    ap.add_argument("--prompts", choices=sorted(PROMPT_SETS), action="append",
                    help="a prompt set to extract; repeat for several (default: every set whose prompt table "
                         "is in --data-dir)")
    ap.add_argument("--model", default=PAPER_MODEL_ID,
                    help=f"Hub id or local folder of the model (default: {PAPER_MODEL_ID}); a local folder is "
                         "never looked up on the Hub")
    ap.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    ap.add_argument("--position", choices=POSITIONS, default="last",
                    help="'last' (default): read every prompt at its true last token, batching prompts of all "
                         "units by length; 'reference': the release's read (one left-padded batch per unit, no "
                         "attention mask, index n-1), to regenerate the released files")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                    help=f"prompts per forward pass (default {DEFAULT_BATCH_SIZE}, the release's; in 'reference' "
                         "mode a unit larger than this is split into slices, as in the release)")
    ap.add_argument("--padding-side", choices=["right", "left"], default=None,
                    help="padding side in 'last' mode (default right: exact for any causal model; left needs a "
                         "model that honours attention_mask and position_ids). 'reference' always pads left")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="model dtype (default float32; float16 (the release's) or bfloat16 need CUDA)")
    ap.add_argument("--no-resume", action="store_true",
                    help="discard a checkpoint left by an interrupted run and start over")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)

    import torch

    names = args.prompts or [n for n, (table, _, _) in PROMPT_SETS.items() if (args.data_dir / table).is_file()]
    if not names:
        ap.error(f"no prompt table ({', '.join(t for t, _, _ in PROMPT_SETS.values())}) in {args.data_dir}")
    jobs = []
    for name in names:  # read every table before loading the model: fail fast on bad input
        table, unit_columns, out_file = PROMPT_SETS[name]
        df = layout.read_table(args.data_dir / table, required=[*unit_columns, "prompt_text"])
        jobs.append((table, df, unit_columns, out_file))

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model_and_tokenizer(args.model, revision=args.revision, device=device, dtype=args.dtype)
    for table, df, unit_columns, out_file in jobs:
        extract_to_file(model, tokenizer, df, unit_columns, args.data_dir / out_file, resume=not args.no_resume,
                        position=args.position, batch_size=args.batch_size, padding_side=args.padding_side,
                        device=device, progress=not args.no_progress, model_id=args.model, input_file=table)
        print(args.data_dir / out_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
