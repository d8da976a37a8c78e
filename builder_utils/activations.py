"""Stage 12 — raw activation extraction (ALGORITHMS.md §5).

For every unit (an object pair such as `For__list`, or a checker concept such as `ast__Import`) and
every layer, run the unit's prompts through the model, read the output of each block's `.mlp`
module at one token per prompt, and accumulate

    activation_sum = Σ |act|      (float32; |·| taken in the model's dtype, then cast, as released)
    firing_count   = Σ [act ≠ 0]  (int32)
    n_prompts

Stage 13 thresholds these (mean |act| > ε, firing rate ≥ C) without touching the model again.

Two read positions:
* `last` (default): each prompt is read at its true last token. Prompts of all units are sorted by
  token length and batched together, so batches carry little padding; padding goes on the right by
  default, where a causal model cannot see it, which makes a batched result equal the
  one-prompt-at-a-time result for any causal LM (left padding works too, through attention_mask
  and position_ids, for models that honour them).
* `reference`: the release's behaviour, to regenerate the released files. One batch per unit
  (slices of batch_size, row order), left padding with eos, no attention mask, read index
  n_b − 1. With left padding that index is not the last token of the shorter prompts (§5.2 ⚠).

Resume: the batch schedule is a pure function of the input, so a checkpoint (all accumulators after
the first k batches, written atomically) lets a killed run skip those k batches and finish with
bit-identical sums.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import layout
from .concepts import pair_key
from .models import find_mlp_modules, max_positions

POSITIONS = ("last", "reference")
DEFAULT_BATCH_SIZE = 64             # the release's batch size
CHECKPOINT_EVERY_S = 60.0           # seconds between checkpoint writes
PROMPT_COLUMN = "prompt_text"
OBJECT_UNIT_COLUMNS = ("ast_node", "builtin_obj")
CHECKER_UNIT_COLUMNS = ("object",)
CHECKPOINT_VERSION = 1


class ExtractionError(ValueError):
    """Bad extraction input or output: empty unit/prompt, over-long prompt, non-finite activation."""


# ----------------------------------------------------------------------------- the batch schedule


@dataclass
class _Batch:
    units: np.ndarray       # (B,) unit index of each row
    ids: list[list[int]]    # token ids, unpadded


def _tokenize(tokenizer, units: dict[str, list[str]], keys: list[str], truncate_to: int | None
              ) -> list[list[list[int]]]:
    """Token ids per unit and prompt, without special tokens (as every release encode call)."""
    for key in keys:
        if len(units[key]) == 0:
            raise ExtractionError(f"unit {key!r} has no prompts")
        for row, p in enumerate(units[key]):
            if not isinstance(p, str) or not p:
                raise ExtractionError(f"unit {key!r}, prompt {row}: empty or not a string ({p!r})")
    flat = tokenizer([p for key in keys for p in units[key]], add_special_tokens=False)["input_ids"]
    out, start = [], 0
    for key in keys:
        ids = flat[start:start + len(units[key])]
        start += len(units[key])
        for row, seq in enumerate(ids):
            if len(seq) == 0:
                raise ExtractionError(f"unit {key!r}, prompt {row} encodes to no tokens: {units[key][row]!r}")
        out.append([seq[:truncate_to] for seq in ids] if truncate_to is not None else ids)
    return out


def _schedule(token_ids: list[list[list[int]]], position: str, batch_size: int) -> list[_Batch]:
    if position == "reference":
        # The release: the prompts of one unit, in row order, sliced into batches.
        return [_Batch(np.full(len(ids[s:s + batch_size]), u), ids[s:s + batch_size])
                for u, ids in enumerate(token_ids) for s in range(0, len(ids), batch_size)]
    # All prompts of all units, shortest first (ties: unit, then row), cut into batches.
    rows = [(len(seq), u, r) for u, ids in enumerate(token_ids) for r, seq in enumerate(ids)]
    rows.sort()
    batches = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        batches.append(_Batch(np.array([u for _, u, _ in chunk]), [token_ids[u][r] for _, u, r in chunk]))
    return batches


def _pad(ids: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, seq in enumerate(ids):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        input_ids[b, cols] = torch.tensor(seq, dtype=torch.long)
        mask[b, cols] = 1
    return input_ids, mask


# ----------------------------------------------------------------------------- hooks


class _StopForward(Exception):
    """Raised by the last layer's hook: nothing after the last MLP is needed."""


class _MLPReader:
    """Forward hooks that keep `out[b, pos[b]]` of every `.mlp` module (out may be a tuple -> out[0])."""

    def __init__(self, model: torch.nn.Module):
        self.modules = find_mlp_modules(model)
        self.rows: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.vectors: list[torch.Tensor | None] = [None] * len(self.modules)
        self.handles = []

    def __enter__(self):
        last = len(self.modules) - 1
        for layer, (_, module) in enumerate(self.modules):
            self.handles.append(module.register_forward_hook(self._hook(layer, stop=layer == last)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, layer: int, stop: bool):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            self.vectors[layer] = out[self.rows, self.pos].detach()
            if stop:
                raise _StopForward
        return hook

    def read(self, model, input_ids, pos, **kwargs) -> torch.Tensor:
        """(B, n_layers, width) activations, in the model's dtype."""
        self.rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        self.pos = pos
        self.vectors = [None] * len(self.modules)
        try:
            model(input_ids, **kwargs)
        except _StopForward:
            pass
        return torch.stack(self.vectors, dim=1)


def _forward_accepts(model, name: str) -> bool:
    params = inspect.signature(model.forward).parameters
    return name in params and params[name].kind != inspect.Parameter.VAR_KEYWORD


# ----------------------------------------------------------------------------- checkpoints


def _fingerprint(model, keys, token_ids, position, batch_size, padding_side, model_id) -> str:
    """What a checkpoint must match to be resumed: the model's architecture, the settings, the prompts."""
    h = hashlib.sha256()
    params = [(name, list(p.shape), str(p.dtype)) for name, p in model.named_parameters()]
    h.update(json.dumps([CHECKPOINT_VERSION, position, batch_size, padding_side, model_id, params]).encode())
    for key, ids in zip(keys, token_ids):
        h.update(json.dumps([key, ids]).encode())
    return h.hexdigest()


def _save_checkpoint(path: Path, fingerprint: str, done: int, sums: np.ndarray, counts: np.ndarray) -> None:
    with layout.atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, fingerprint=np.array(fingerprint), done_batches=np.int64(done), sums=sums, counts=counts)


def _load_checkpoint(path: Path, fingerprint: str, units_layers: tuple[int, int]
                     ) -> tuple[int, np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as z:
            if str(z["fingerprint"]) != fingerprint:
                tqdm.write(f"{path}: checkpoint is for other prompts/settings; starting over")
                return None
            sums, counts = z["sums"], z["counts"]
            if sums.shape[:2] != units_layers or counts.shape != sums.shape:
                tqdm.write(f"{path}: checkpoint has shape {sums.shape}, expected {units_layers} + (width,); "
                           f"starting over")
                return None
            return int(z["done_batches"]), sums.astype(np.float32), counts.astype(np.int32)
    except (OSError, ValueError, KeyError) as exc:
        tqdm.write(f"{path}: unreadable checkpoint ({exc}); starting over")
        return None


# ----------------------------------------------------------------------------- extraction


def extract_activations(model: torch.nn.Module, tokenizer, units: dict[str, list[str]], *,
                        position: str = "last", batch_size: int = DEFAULT_BATCH_SIZE,
                        padding_side: str | None = None, device: str | torch.device | None = None,
                        checkpoint_path: str | os.PathLike | None = None,
                        checkpoint_every: float = CHECKPOINT_EVERY_S, progress: bool = True,
                        model_id: str = "", input_file: str = "") -> layout.Activations:
    """Σ|act|, count(act ≠ 0) and n_prompts of every unit's prompts at every `.mlp` output.

    units: unit key -> its prompts in row order. position: "last" (true last token, batches across
    units sorted by length) or "reference" (the release's read, to regenerate the released files).
    padding_side: "right" (default in `last` mode; exact for any causal model) or "left"; `reference`
    always pads left. device: where inputs go (default: the model's device). With checkpoint_path,
    progress is saved every `checkpoint_every` seconds (0: after every batch) and an existing
    checkpoint for the same input is resumed.
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not units:
        raise ExtractionError("no units to extract")
    side = "left" if position == "reference" else (padding_side or "right")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if position == "reference" and padding_side not in (None, "left"):
        raise ValueError("position='reference' always pads left (that is the release's behaviour)")
    if model.training:
        raise ValueError("the model is in training mode (dropout would randomise activations); call model.eval()")
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; load it with models.load_tokenizer (pad = eos)")
    device = torch.device(device) if device is not None else next(model.parameters()).device

    # The release tokenized with truncation=True and no max_length: model_max_length applied.
    n_ctx = max_positions(model)
    tok_max = getattr(tokenizer, "model_max_length", None)
    truncate_to = tok_max if position == "reference" and isinstance(tok_max, int) and tok_max < 10**9 else None
    keys = sorted(units)
    token_ids = _tokenize(tokenizer, units, keys, truncate_to)
    if n_ctx is not None:
        for key, ids in zip(keys, token_ids):
            longest = max(len(s) for s in ids)
            if longest > n_ctx:
                raise ExtractionError(f"unit {key!r} has a prompt of {longest} tokens; the model takes at most {n_ctx}")

    kwargs = {}
    if _forward_accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    pass_mask = position == "last" and _forward_accepts(model, "attention_mask")
    pass_positions = position == "last" and side == "left"
    if pass_positions and not (pass_mask and _forward_accepts(model, "position_ids")):
        raise ValueError(f"{type(model).__name__}.forward does not take attention_mask and position_ids, so left "
                         f"padding would shift positions; use padding_side='right'")

    batches = _schedule(token_ids, position, batch_size)
    reader = _MLPReader(model)
    n_layers = len(reader.modules)
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    fingerprint = (_fingerprint(model, keys, token_ids, position, batch_size, side, model_id)
                   if checkpoint_path is not None else "")
    sums = counts = None
    done = 0
    if checkpoint_path is not None and checkpoint_path.is_file():
        state = _load_checkpoint(checkpoint_path, fingerprint, (len(keys), n_layers))
        if state is not None:
            done, sums, counts = state

    n_total = sum(len(ids) for ids in token_ids)
    bar = tqdm(total=n_total, initial=sum(len(b.ids) for b in batches[:done]), unit="prompt",
               desc=f"extract[{position}]", disable=not progress)
    last_save = time.monotonic()
    with torch.inference_mode(), reader:
        for i in range(done, len(batches)):
            batch = batches[i]
            input_ids, mask = _pad(batch.ids, tokenizer.pad_token_id, side)
            if position == "reference" or side == "right":
                pos = mask.sum(1) - 1       # n_b - 1: the last token with right padding; the release's quirk with left
            else:
                pos = torch.full((len(batch.ids),), input_ids.shape[1] - 1)
            step_kwargs = dict(kwargs)
            if pass_mask:
                step_kwargs["attention_mask"] = mask.to(device)
            if pass_positions:
                step_kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0).to(device)
            acts = reader.read(model, input_ids.to(device), pos.to(device), **step_kwargs)
            _check_finite(acts, batch.units, keys)
            abs_acts = acts.abs()   # in the model's dtype, as the release did, then cast
            batch_sums = abs_acts.float().cpu().numpy()
            batch_fire = (abs_acts > 0).cpu().numpy()
            if sums is None:
                sums = np.zeros((len(keys), n_layers, batch_sums.shape[2]), dtype=np.float32)
                counts = np.zeros(sums.shape, dtype=np.int32)
            for b, u in enumerate(batch.units):   # one prompt at a time: a fixed float32 summation order
                sums[u] += batch_sums[b]
                counts[u] += batch_fire[b]
            bar.update(len(batch.ids))
            if checkpoint_path is not None and i + 1 < len(batches) and (
                    time.monotonic() - last_save >= checkpoint_every):
                _save_checkpoint(checkpoint_path, fingerprint, i + 1, sums, counts)
                last_save = time.monotonic()
    bar.close()

    n_prompts = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    return layout.Activations(keys=keys, activation_sum=sums, firing_count=counts, n_prompts=n_prompts,
                              attrs={"model_id": model_id, "input_file": input_file})


def _check_finite(acts: torch.Tensor, units: np.ndarray, keys: list[str]) -> None:
    bad = ~torch.isfinite(acts)
    if bad.any():
        b, layer, _ = (int(x) for x in bad.nonzero()[0])
        raise ExtractionError(f"non-finite activation (NaN/inf) for unit {keys[units[b]]!r} at layer {layer}")


# ----------------------------------------------------------------------------- files


def units_from_prompts(prompts_df: pd.DataFrame, unit_columns: list[str] | tuple[str, ...],
                       source: str = "prompts") -> dict[str, list[str]]:
    """Group a prompts table into units, rows kept in table order.

    `("ast_node", "builtin_obj")` -> pair keys `For__list`; `("object",)` -> the object key itself.
    """
    unit_columns = list(unit_columns)
    missing = [c for c in unit_columns + [PROMPT_COLUMN] if c not in prompts_df.columns]
    if missing:
        raise ExtractionError(f"{source}: missing column(s) {missing}; has {list(prompts_df.columns)}")
    if len(unit_columns) not in (1, 2):
        raise ValueError(f"unit_columns must be one column or (ast, builtin), got {unit_columns}")
    if prompts_df.empty:
        raise ExtractionError(f"{source}: no prompts")
    units: dict[str, list[str]] = {}
    for group, rows in prompts_df.groupby(unit_columns, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        key = pair_key(*group) if len(unit_columns) == 2 else str(group[0])
        texts = rows[PROMPT_COLUMN].tolist()
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t]
        if bad:
            raise ExtractionError(f"{source}: unit {key!r} has an empty or missing prompt_text at row {bad[0]}")
        units[key] = texts
    return units


def checkpoint_path_for(out_path: str | os.PathLike) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".checkpoint.npz")


def extract_to_file(model: torch.nn.Module, tokenizer, prompts_df: pd.DataFrame,
                    unit_columns: list[str] | tuple[str, ...], out_path: str | os.PathLike, *,
                    resume: bool = True, checkpoint_path: str | os.PathLike | None = None,
                    **kw) -> layout.Activations:
    """Extract a prompts table and write `12_*_activations.h5` (release layout, atomic).

    Progress is checkpointed to `checkpoint_path` (default `<out>.checkpoint.npz`), resumed from it
    when `resume` (default), and the checkpoint is removed on success. Other keyword arguments go to
    extract_activations (position, batch_size, device, model_id, input_file, ...).
    """
    out_path = Path(out_path)
    units = units_from_prompts(prompts_df, unit_columns, source=kw.get("input_file") or "prompts")
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else checkpoint_path_for(out_path)
    if not resume and ckpt.exists():
        ckpt.unlink()
    acts = extract_activations(model, tokenizer, units, checkpoint_path=ckpt, **kw)
    if len(unit_columns) == 2:   # the object file also lists its AST nodes and builtins
        acts.ast_nodes = sorted(prompts_df[unit_columns[0]].unique().tolist())
        acts.builtin_objs = sorted(prompts_df[unit_columns[1]].unique().tolist())
    layout.write_activations(out_path, acts)
    if ckpt.exists():
        ckpt.unlink()
    return acts
