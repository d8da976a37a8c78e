#!/usr/bin/env python
"""Stage 11A: write 11A_object_prompts.parquet and 11A_object_stats.json (ALGORITHMS.md §1).

Generates template prompts for every (AST node, builtin) pair of the release grid, scores them with
the model (mean next-token loss) and drops the pairs whose mean loss is above the threshold.

    python scripts/make_object_prompts.py --data-dir build/raw                        # the paper's run
    python scripts/make_object_prompts.py --data-dir /tmp/t --model build/model \\
        --ast-nodes For,Import --builtins list,_isolated_ --n-generate 5 --loss-threshold drop_worst:1

Prompt texts are always the release's: the first --n-generate candidates of each selected pair in
the stream generated over the whole grid with 50 candidates per pair (only --n-generate > 50 needs a
stream of its own, generated over the selected pairs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import object_prompts as op  # noqa: E402


def _names(text: str | None) -> set[str] | None:
    return None if text is None else {t.strip() for t in text.split(",") if t.strip()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, type=Path,
                    help="folder that receives the two output files (created if missing)")
    ap.add_argument("--model", default="openai/circuit-sparsity",
                    help="Hub id or local folder of the scoring model (default: openai/circuit-sparsity)")
    ap.add_argument("--n-generate", type=int, default=op.N_GENERATE,
                    help=f"candidate prompts per pair (default {op.N_GENERATE}, the release)")
    ap.add_argument("--n-keep", type=int, default=op.N_KEEP,
                    help=f"prompts kept per surviving pair, the first ones in generation order (default {op.N_KEEP})")
    ap.add_argument("--loss-threshold", default=str(op.LOSS_THRESHOLD),
                    help="a pair whose mean loss (nats) is strictly above this is dropped; a number "
                         f"(default {op.LOSS_THRESHOLD}, the paper's, for openai/circuit-sparsity) or "
                         "'drop_worst:K' to drop the K worst pairs (for a random-init model, whose losses "
                         "all sit near ln(vocab); 'drop_worst:21' mirrors the release's 21 dropped pairs)")
    ap.add_argument("--seed", type=int, default=op.SEED, help=f"seed of the prompt generator (default {op.SEED})")
    ap.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass when scoring (default 32)")
    ap.add_argument("--device", default=None, help="torch device for scoring (default: cuda if available, else cpu)")
    ap.add_argument("--dtype", default="float32",
                    help="model dtype (default float32, as the release scored; float16/bfloat16 need CUDA)")
    ap.add_argument("--ast-nodes", default=None,
                    help="comma-separated AST nodes to keep from the grid (default: all 43)")
    ap.add_argument("--builtins", default=None,
                    help="comma-separated builtins to keep from the grid, '_isolated_' included (default: all 63)")
    ap.add_argument("--no-resume", action="store_true",
                    help="ignore a score checkpoint left by an interrupted run and rescore everything")
    args = ap.parse_args(argv)

    op.parse_loss_threshold(args.loss_threshold)         # fail fast, before loading a model
    ast_nodes, builtin_names = _names(args.ast_nodes), _names(args.builtins)
    pairs = [(a, b) for a, b in op.build_concept_matrix()
             if (ast_nodes is None or a in ast_nodes) and (builtin_names is None or b in builtin_names)]
    if not pairs:
        ap.error("--ast-nodes/--builtins select no pair of the grid")
    if args.n_generate <= op.N_GENERATE:
        candidates = op.release_candidates(pairs, per_pair=args.n_generate, seed=args.seed)
    else:
        candidates = op.generate_candidates(pairs, n_generate=args.n_generate, seed=args.seed)

    import torch
    from builder_utils.models import load_model_and_tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model_and_tokenizer(args.model, device=device, dtype=args.dtype)
    path = op.make_object_prompts(
        args.data_dir, model, tokenizer, pairs=pairs, n_generate=args.n_generate, n_keep=args.n_keep,
        loss_threshold=args.loss_threshold, seed=args.seed, candidates=candidates, batch_size=args.batch_size,
        device=device, resume=not args.no_resume)
    print(f"wrote {path} and {path.with_name(op.layout.OBJECT_PROMPT_STATS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
