#!/usr/bin/env python
"""Stage 12 (activation extraction): ours vs the release's batching, on the mini model and mini-atlas prompts.

    python benchmarks/bench_extraction.py                         # 1,297 pairs x 4 prompts (the `mini` preset)
    python benchmarks/bench_extraction.py --n-pairs 300 --model build/model

Prompts: the first --n-prompts 11A candidates of every object pair (builder_utils.object_prompts),
grouped into units as stage 12 groups them. Model: --model, or a mini model built on those prompts.
Both sides run in this process on the same model and prompts, in float32 on the CPU:
  ours      extract_activations(position="last"): prompts of all units sorted by token length and
            batched together (--batch-size), right padding, a forward pass that stops after the last MLP.
  baseline  the release's loop (12_extraction.ipynb): one tokenizer call and one full forward pass per
            unit, no length sorting, hooks keeping whole [B, T, W] outputs, per-prompt accumulation;
            but reading the true last token (right padding + attention mask), so results are comparable.
Reported: prompts/s of each (best of --repeat), the speed-up, and the max abs difference of the
Σ|act| arrays. Target: >= 2x. Timings on a busy machine are noisy; --threads 1 steadies them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder_utils import object_prompts  # noqa: E402
from builder_utils.activations import extract_activations, units_from_prompts  # noqa: E402
from builder_utils.models import build_mini_model, find_mlp_modules, load_model_and_tokenizer  # noqa: E402


def baseline_extract(model, tokenizer, units: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """The release's per-unit loop, with correct (true last token) positions. Returns Σ|act| per unit."""
    captured = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(
        i, (out[0] if isinstance(out, tuple) else out).detach())) for i, (_, m) in enumerate(find_mlp_modules(model))]
    tokenizer.padding_side = "right"
    sums = {}
    try:
        for key, prompts in units.items():
            enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, add_special_tokens=False)
            with torch.no_grad():
                model(enc["input_ids"], attention_mask=enc["attention_mask"])
            last = enc["attention_mask"].sum(1) - 1
            total = None
            for b in range(len(prompts)):
                vec = np.stack([captured[i][b, last[b]].abs().numpy().astype(np.float32)
                                for i in range(len(captured))])
                total = vec if total is None else total + vec
            sums[key] = total
    finally:
        for h in handles:
            h.remove()
    return sums


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-pairs", type=int, default=None, help="use the first N object pairs (default: all 1,297)")
    ap.add_argument("--n-prompts", type=int, default=4, help="prompts per pair (default 4, the mini preset)")
    ap.add_argument("--batch-size", type=int, default=64, help="our batch size (default 64)")
    ap.add_argument("--model", default=None, help="a saved model folder (default: build a mini model on the prompts)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each side; the best counts (default 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; 1 gives steadier timings on a busy machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    candidates = object_prompts.generate_candidates(n_generate=args.n_prompts)
    units = units_from_prompts(candidates, ["ast_node", "builtin_obj"])
    if args.n_pairs is not None:
        units = dict(list(units.items())[: args.n_pairs])
    n_prompts = sum(map(len, units.values()))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_mini_model(Path(tmp) / "model", candidates["prompt_text"].tolist())
        model, tok = load_model_and_tokenizer(model_dir)
    lengths = [len(ids) for ids in tok([p for ps in units.values() for p in ps], add_special_tokens=False)["input_ids"]]
    print(f"{len(units)} units, {n_prompts} prompts, {np.mean(lengths):.1f} tokens on average (max {max(lengths)}), "
          f"{len(find_mlp_modules(model))} layers x {model.config.n_embd} channels, torch threads "
          f"{torch.get_num_threads()}")

    # Alternate the two, best of --repeat each: the first runs also pay for allocator growth.
    t_ours = t_base = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = extract_activations(model, tok, units, batch_size=args.batch_size, progress=False)
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        base = baseline_extract(model, tok, units)
        t_base = min(t_base, time.perf_counter() - t0)

    base_arr = np.stack([base[k] for k in ours.keys])
    diff = float(np.abs(ours.activation_sum - base_arr).max())
    rel = diff / float(np.abs(base_arr).max())
    print(f"ours      {t_ours:7.2f} s  {n_prompts / t_ours:8.1f} prompts/s")
    print(f"baseline  {t_base:7.2f} s  {n_prompts / t_base:8.1f} prompts/s")
    print(f"speed-up  {t_base / t_ours:.2f}x   (target >= 2x)")
    print(f"max |Σ|act| ours - baseline| = {diff:.3g} (relative to the largest sum: {rel:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
