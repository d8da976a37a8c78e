"""Stage 12 extraction on a real (2-layer) mini transformer.

Expected vectors always come from separate, unpadded forward passes with hooks registered here,
never from the extractor itself.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from builder_utils import layout
from builder_utils.activations import (ExtractionError, checkpoint_path_for, extract_activations, extract_to_file)
from builder_utils.models import build_mini_model, find_mlp_modules, load_model_and_tokenizer

N_LAYERS = 2
_TEMPLATES = [
    "x = 1",
    "for item in range(10):\n    print(item)",
    "def total(values):\n    return sum(values)",
    "import os",
    "if len(data) > 3:\n    result = sorted(data)\nelse:\n    result = list(data)",
    "while count < 5:\n    count += 1",
    "class Box:\n    def __init__(self, size):\n        self.size = abs(size)",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None",
    "pass",
    "items = [str(n) for n in range(4) if n % 2]",
]


def _corpus() -> list[str]:
    names = ["a", "data", "value", "items"]
    return _TEMPLATES + [f"{n} = {t}" for n, t in itertools.product(names, ["len(x)", "max(y, 2)", "{}", "None"])]


@pytest.fixture(scope="module")
def mini_path(tmp_path_factory) -> Path:
    return build_mini_model(tmp_path_factory.mktemp("mini2") / "model", _corpus(), seed=0, n_layer=N_LAYERS,
                            n_embd=32, n_head=2, vocab_size=512)


@pytest.fixture(scope="module")
def mini(mini_path):
    return load_model_and_tokenizer(mini_path)


@pytest.fixture(scope="module")
def units() -> dict[str, list[str]]:
    """Units with 1-4 prompts of mixed lengths (as unequal as the templates allow)."""
    t = _TEMPLATES
    return {"For__list": [t[1], t[3], t[4]], "Assert___isolated_": [t[8]], "ast__Import": [t[3], t[0], t[6], t[9]],
            "Call__len": [t[2], t[5]], "builtin__str": [t[7], t[9], t[0]]}


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _last_vectors(model, ids: list[int]) -> np.ndarray:
    """(layers, width) MLP outputs at the last token of one unpadded sequence."""
    store = {}
    handles = [model.transformer.h[i].mlp.register_forward_hook(
        lambda m, a, out, i=i: store.__setitem__(i, out[0, -1].clone())) for i in range(N_LAYERS)]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([store[i] for i in range(N_LAYERS)]).numpy()


def _expected_sums(model, tok, units) -> dict[str, np.ndarray]:
    return {k: sum(np.abs(_last_vectors(model, _ids(tok, p))) for p in ps) for k, ps in units.items()}


# ----------------------------------------------------------------------------- `last` mode


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_last_mode_reads_each_prompts_true_last_token(mini, units, padding_side, batch_size):
    model, tok = mini
    acts = extract_activations(model, tok, units, batch_size=batch_size, padding_side=padding_side, progress=False)
    assert acts.keys == sorted(units)
    assert acts.activation_sum.shape == (len(units), N_LAYERS, 32) and acts.activation_sum.dtype == np.float32
    assert acts.firing_count.dtype == np.int32
    assert list(acts.n_prompts) == [len(units[k]) for k in acts.keys]
    expected = _expected_sums(model, tok, units)
    for i, key in enumerate(acts.keys):
        np.testing.assert_allclose(acts.activation_sum[i], expected[key], rtol=1e-4, atol=1e-5)
    # GPT-2's MLP output is dense: every channel fires on every prompt
    assert (acts.firing_count == acts.n_prompts[:, None, None]).all()


def test_last_mode_result_does_not_depend_on_batching(mini, units):
    model, tok = mini
    a = extract_activations(model, tok, units, batch_size=2, progress=False)
    b = extract_activations(model, tok, units, batch_size=64, padding_side="left", progress=False)
    np.testing.assert_allclose(a.activation_sum, b.activation_sum, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- `reference` mode


def test_reference_mode_reads_the_positions_the_release_read(mini):
    """One unit = one left-padded batch, no attention mask, index n_b - 1 (ALGORITHMS.md §5.2)."""
    model, tok = mini
    eos = tok.eos_token_id
    by_length = {}
    for text in _corpus():
        by_length.setdefault(len(_ids(tok, text)), text)
    L = max(by_length)
    short_n = max(n for n in by_length if 2 * n <= L)            # read falls in the pad region
    mid_n = min(n for n in by_length if 2 * n > L and n < L)     # read falls on token 2n - L - 1
    longest, short, mid = by_length[L], by_length[short_n], by_length[mid_n]

    # Planted: with left padding and no mask, position p of a padded row sees exactly the tokens
    # 0..p of that row, so each read equals the last token of a shorter, unpadded sequence.
    expected_rows = [
        _last_vectors(model, _ids(tok, longest)),                                   # the true last token
        _last_vectors(model, [eos] * short_n),                                      # eos only
        _last_vectors(model, [eos] * (L - mid_n) + _ids(tok, mid)[: 2 * mid_n - L]),  # token 2n - L - 1
    ]
    acts = extract_activations(model, tok, {"u": [longest, short, mid]}, position="reference", progress=False)
    np.testing.assert_allclose(acts.activation_sum[0], sum(np.abs(r) for r in expected_rows), rtol=1e-4, atol=1e-5)
    # and it is not what the true last tokens give
    true_last = sum(np.abs(_last_vectors(model, _ids(tok, p))) for p in (longest, short, mid))
    assert not np.allclose(acts.activation_sum[0], true_last, rtol=1e-3)

    # Batches are slices of batch_size within a unit: alone in its slice, `mid` is read at its last token.
    sliced = extract_activations(model, tok, {"u": [longest, short, mid]}, position="reference", batch_size=2,
                                 progress=False)
    expected = np.abs(expected_rows[0]) + np.abs(expected_rows[1]) + np.abs(_last_vectors(model, _ids(tok, mid)))
    np.testing.assert_allclose(sliced.activation_sum[0], expected, rtol=1e-4, atol=1e-5)


def test_reference_mode_cannot_pad_right(mini, units):
    with pytest.raises(ValueError, match="always pads left"):
        extract_activations(*mini, units, position="reference", padding_side="right", progress=False)


# ----------------------------------------------------------------------------- resume


class _Interrupt(RuntimeError):
    pass


def _count_forwards(model, fail_after: int | None = None):
    """A pre-hook on the whole model: counts forward calls, raises on call fail_after + 1."""
    calls = []

    def pre_hook(module, args):
        if fail_after is not None and len(calls) >= fail_after:
            raise _Interrupt(f"simulated crash after {fail_after} batches")
        calls.append(1)
    return calls, model.register_forward_pre_hook(pre_hook)


@pytest.mark.parametrize("position", ["last", "reference"])
def test_an_interrupted_run_resumes_to_the_identical_result(mini, tmp_path, position):
    model, tok = mini
    # enough units and prompts for several batches
    units = {f"unit_{u:02d}": [_corpus()[(u * 3 + r) % len(_corpus())] for r in range(2 + u % 3)] for u in range(12)}
    kw = dict(position=position, batch_size=4, progress=False)
    full = extract_activations(model, tok, units, **kw)
    n_batches = len(units) if position == "reference" else -(-sum(map(len, units.values())) // 4)

    ckpt = tmp_path / "run.checkpoint.npz"
    calls, handle = _count_forwards(model, fail_after=3)
    with pytest.raises(_Interrupt):
        extract_activations(model, tok, units, checkpoint_path=ckpt, checkpoint_every=0, **kw)
    handle.remove()
    assert ckpt.is_file() and len(calls) == 3

    calls, handle = _count_forwards(model)
    try:
        resumed = extract_activations(model, tok, units, checkpoint_path=ckpt, checkpoint_every=0, **kw)
    finally:
        handle.remove()
    assert len(calls) == n_batches - 3          # the first three batches were not redone
    assert resumed.keys == full.keys
    np.testing.assert_array_equal(resumed.activation_sum, full.activation_sum)   # bit-identical
    np.testing.assert_array_equal(resumed.firing_count, full.firing_count)
    np.testing.assert_array_equal(resumed.n_prompts, full.n_prompts)


def test_a_checkpoint_for_other_prompts_is_not_resumed(mini, tmp_path, units):
    model, tok = mini
    ckpt = tmp_path / "c.npz"
    _, handle = _count_forwards(model, fail_after=1)
    with pytest.raises(_Interrupt):
        extract_activations(model, tok, {"a": ["x = 1"] * 3, "b": ["import os"] * 3}, batch_size=2,
                            checkpoint_path=ckpt, checkpoint_every=0, progress=False)
    handle.remove()
    assert ckpt.is_file()
    got = extract_activations(model, tok, units, checkpoint_path=ckpt, progress=False)
    expected = extract_activations(model, tok, units, progress=False)
    np.testing.assert_array_equal(got.activation_sum, expected.activation_sum)


# ----------------------------------------------------------------------------- files


def test_extract_to_file_writes_the_release_layout(mini, tmp_path):
    model, tok = mini
    t = _TEMPLATES
    df = pd.DataFrame({"ast_node": ["For", "For", "Assert", "For", "Call"],
                       "builtin_obj": ["list", "list", "_isolated_", "range", "len"],
                       "variation_id": [0, 1, 0, 0, 0],
                       "prompt_text": [t[1], t[4], t[8], t[1], t[2]]})
    out = tmp_path / layout.OBJECT_ACTIVATIONS
    acts = extract_to_file(model, tok, df, ["ast_node", "builtin_obj"], out, model_id="mini", input_file="p.parquet",
                           progress=False)
    back = layout.read_activations(out)
    assert back.keys == ["Assert___isolated_", "Call__len", "For__list", "For__range"]
    np.testing.assert_array_equal(back.activation_sum, acts.activation_sum)
    np.testing.assert_array_equal(back.firing_count, acts.firing_count)
    assert list(back.n_prompts) == [1, 1, 2, 1]
    assert back.ast_nodes == ["Assert", "Call", "For"] and back.builtin_objs == ["_isolated_", "len", "list", "range"]
    assert back.attrs["model_id"] == "mini" and back.attrs["input_file"] == "p.parquet"
    assert back.attrs["n_layers"] == N_LAYERS and back.attrs["n_pairs"] == 4
    # rows of a unit keep table order; the sums equal independent single-prompt passes
    expected = np.abs(_last_vectors(model, _ids(tok, t[1]))) + np.abs(_last_vectors(model, _ids(tok, t[4])))
    np.testing.assert_allclose(back.activation_sum[2], expected, rtol=1e-4, atol=1e-5)
    assert not checkpoint_path_for(out).exists()


def test_checker_file_is_keyed_by_object(mini, tmp_path):
    model, tok = mini
    df = pd.DataFrame({"object": ["ast__Import", "builtin__len", "ast__Import"], "keyword": ["import", "len", "import"],
                       "variation_id": [0, 0, 1], "prompt_text": ["x = 1", "pass", "import os"]})
    out = tmp_path / layout.CHECKER_ACTIVATIONS
    extract_to_file(model, tok, df, ["object"], out, progress=False)
    back = layout.read_activations(out)
    assert back.keys == ["ast__Import", "builtin__len"] and list(back.n_prompts) == [2, 1]
    assert back.ast_nodes is None


# ----------------------------------------------------------------------------- bad input


def test_empty_prompt_is_named(mini):
    with pytest.raises(ExtractionError, match="'For__list', prompt 1"):
        extract_activations(*mini, {"For__list": ["x = 1", ""], "b": ["pass"]}, progress=False)


def test_empty_unit_is_named(mini):
    with pytest.raises(ExtractionError, match="'ast__Pass' has no prompts"):
        extract_activations(*mini, {"ast__Pass": [], "b": ["pass"]}, progress=False)


def test_missing_prompt_in_a_table_is_named(mini, tmp_path):
    df = pd.DataFrame({"object": ["ast__If", "ast__If"], "prompt_text": ["if x:\n    pass", None]})
    with pytest.raises(ExtractionError, match="'ast__If'"):
        extract_to_file(*mini, df, ["object"], tmp_path / "o.h5", progress=False)
    assert not (tmp_path / "o.h5").exists()


def test_missing_columns_are_named(mini, tmp_path):
    with pytest.raises(ExtractionError, match="missing column"):
        extract_to_file(*mini, pd.DataFrame({"object": ["a"], "text": ["x"]}), ["object"], tmp_path / "o.h5")


def test_nan_activation_names_unit_and_layer(mini, units, tmp_path):
    model, tok = mini
    handle = model.transformer.h[1].mlp.register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        with pytest.raises(ExtractionError, match=r"non-finite .* unit 'Assert___isolated_' at layer 1"):
            extract_activations(model, tok, units, position="reference", progress=False)
        df = pd.DataFrame({"object": ["ast__If"], "prompt_text": ["x = 1"]})
        with pytest.raises(ExtractionError, match="non-finite"):
            extract_to_file(model, tok, df, ["object"], tmp_path / "o.h5", progress=False)
        assert not (tmp_path / "o.h5").exists()
    finally:
        handle.remove()


def test_model_without_mlp_modules_is_refused(mini, units):
    class NoMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = torch.nn.Embedding(512, 8), torch.nn.Linear(8, 512)

        def forward(self, input_ids, **kwargs):
            return self.head(self.emb(input_ids))

    with pytest.raises(ValueError, match="no module named .*mlp"):
        extract_activations(NoMLP().eval(), mini[1], units, progress=False)


def test_prompt_longer_than_the_context_is_named(tmp_path):
    path = build_mini_model(tmp_path / "m", _corpus(), n_layer=1, n_embd=16, n_head=2, vocab_size=300,
                            n_positions=64)
    model, tok = load_model_and_tokenizer(path)
    with pytest.raises(ExtractionError, match="'long'.* at most 64"):
        extract_activations(model, tok, {"long": ["x = 1\n" * 100], "ok": ["pass"]}, progress=False)


def test_a_model_in_training_mode_is_refused(mini, units):
    model, tok = mini
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            extract_activations(model, tok, units, progress=False)
    finally:
        model.eval()


# ----------------------------------------------------------------------------- the CLIs


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_extracts_every_prompt_table_in_a_folder(mini, mini_path, tmp_path):
    t = _TEMPLATES
    layout.write_table(pd.DataFrame({"ast_node": ["For", "For", "Import"], "builtin_obj": ["list", "list", "_isolated_"],
                                     "variation_id": [0, 1, 0], "prompt_text": [t[1], t[4], t[3]]}),
                       tmp_path / layout.OBJECT_PROMPTS)
    layout.write_table(pd.DataFrame({"object": ["ast__Import", "builtin__len"], "keyword": ["import", "len"],
                                     "variation_id": [0, 0], "prompt_text": [t[0], t[8]]}),
                       tmp_path / layout.CHECKER_PROMPTS)
    cli = _load_script("extract_activations")
    assert cli.main(["--data-dir", str(tmp_path), "--model", str(mini_path), "--no-progress"]) == 0
    obj = layout.read_activations(tmp_path / layout.OBJECT_ACTIVATIONS)
    chk = layout.read_activations(tmp_path / layout.CHECKER_ACTIVATIONS)
    assert not (tmp_path / layout.TOKEN_CHECKER_ACTIVATIONS).exists()
    assert obj.keys == ["For__list", "Import___isolated_"] and chk.keys == ["ast__Import", "builtin__len"]
    assert obj.attrs["model_id"] == str(mini_path) and obj.attrs["input_file"] == layout.OBJECT_PROMPTS
    model, tok = mini
    expected = np.abs(_last_vectors(model, _ids(tok, t[0])))
    np.testing.assert_allclose(chk.activation_sum[0], expected, rtol=1e-4, atol=1e-5)


def test_cli_builds_a_mini_model_from_a_prompt_table(tmp_path):
    layout.write_table(pd.DataFrame({"object": ["a"] * len(_corpus()), "prompt_text": _corpus()}),
                       tmp_path / layout.CHECKER_PROMPTS)
    cli = _load_script("make_mini_model")
    out = tmp_path / "model"
    assert cli.main(["--out", str(out), "--data-dir", str(tmp_path), "--n-layer", "2", "--n-embd", "16",
                     "--n-head", "2", "--vocab-size", "300"]) == 0
    model, tok = load_model_and_tokenizer(out)
    assert len(find_mlp_modules(model)) == 2 and len(tok) == 300 and tok.eos_token_id == 299
