"""The model loader, MLP hook discovery, the config shim and the offline mini model."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from builder_utils import models
from builder_utils.models import (build_mini_model, find_mlp_modules, install_config_shim, load_model_and_tokenizer,
                                  load_tokenizer, train_mini_tokenizer)

_NAMES = ["x", "items", "total", "value", "data", "result"]
_BUILTINS = ["len", "range", "sorted", "sum", "max", "list", "str", "abs"]
_TEMPLATES = [
    "for {n} in {b}({m}):\n    print({n})",
    "{n} = {b}({m})",
    "if {b}({n}) > 3:\n    {m} = {n}\nelse:\n    {m} = None",
    "def f({n}):\n    return {b}({n})",
    "import os\n{n} = os.path.join({m}, 'a')",
    "while {n} < {b}({m}):\n    {n} += 1",
    "class A:\n    def g(self, {n}):\n        return {b}({n}, {m})",
    "try:\n    {n} = {b}({m})\nexcept ValueError:\n    pass",
]


def code_snippets() -> list[str]:
    """A few hundred short, deterministic Python snippets (a stand-in for the prompt corpus)."""
    return [t.format(n=n, m=m, b=b) for t, n, m, b in itertools.product(_TEMPLATES, _NAMES, _NAMES[::-1], _BUILTINS)
            if n != m]


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory) -> Path:
    return build_mini_model(tmp_path_factory.mktemp("mini") / "model", code_snippets(), seed=0)


# ----------------------------------------------------------------------------- the mini model


def test_loader_loads_the_saved_mini_model_and_finds_8_mlps(mini_dir):
    assert (mini_dir / "model.safetensors").is_file() and (mini_dir / "tokenizer.json").is_file()
    model, tok = load_model_and_tokenizer(mini_dir)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert [name for name, _ in find_mlp_modules(model)] == [f"transformer.h.{i}.mlp" for i in range(8)]
    # shaped like tinypython_2k: 2048 ids, eos the last one, pad = eos
    assert len(tok) == 2048 and tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 2047
    assert tok.pad_token_id == tok.eos_token_id
    assert model.config.vocab_size == 2048 and model.config.n_positions >= 256
    ids = tok("for x in range(3):\n    print(x)", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "for x in range(3):\n    print(x)"
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_same_seed_gives_identical_weights_and_vocab(mini_dir, tmp_path):
    again = build_mini_model(tmp_path / "again", code_snippets(), seed=0)
    other = build_mini_model(tmp_path / "other", code_snippets(), seed=1)
    w0, w1, w2 = (load_file(d / "model.safetensors") for d in (mini_dir, again, other))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not torch.equal(w0["transformer.h.0.mlp.c_proj.weight"], w2["transformer.h.0.mlp.c_proj.weight"])
    vocab = [json.loads((d / "tokenizer.json").read_text())["model"] for d in (mini_dir, again, other)]
    assert vocab[0] == vocab[1] == vocab[2]   # the tokenizer depends on the texts only


def test_mini_tokenizer_puts_eos_last_and_encodes_any_text():
    tok = train_mini_tokenizer(code_snippets(), vocab_size=512)
    assert len(tok) == 512 and tok.eos_token_id == 511 and tok.pad_token_id == 511
    text = "λ = 'ünïcode' # never seen in training"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_mini_model_refuses_texts_longer_than_its_context(tmp_path):
    long_text = "\n".join(code_snippets()[:200])
    with pytest.raises(ValueError, match="n_positions=64"):
        build_mini_model(tmp_path / "m", code_snippets()[:50] + [long_text], n_positions=64)
    assert not (tmp_path / "m" / "config.json").exists()


def test_mini_model_channel_means_spread_across_the_epsilon_grid(mini_dir):
    # The mini atlas is only informative if the ε grid {0.001, 0.1, 0.5} cuts the channels at
    # different places: most pass 0.001, a minority passes 0.5.
    model, tok = load_model_and_tokenizer(mini_dir)
    texts = code_snippets()[::12]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")   # right padding
    last = enc["attention_mask"].sum(1) - 1
    store = {}
    for i, (_, mlp) in enumerate(find_mlp_modules(model)):
        mlp.register_forward_hook(lambda m, a, out, i=i: store.__setitem__(i, out[torch.arange(len(last)), last]))
    with torch.no_grad():
        model(**enc)
    mean_abs = torch.stack([store[i] for i in range(8)], 1).abs().mean(0)    # (layers, channels)
    passing = {eps: (mean_abs > eps).float().mean().item() for eps in (0.001, 0.1, 0.5)}
    assert passing[0.001] > 0.8
    assert 0.15 < passing[0.1] < 0.7
    assert 0.02 < passing[0.5] < 0.3


# ----------------------------------------------------------------------------- loader errors


@pytest.mark.parametrize("path", ["/no/such/model/dir", "./no_such_model", "../x/y/z"])
def test_missing_local_path_is_a_clear_error(path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_tokenizer(path)


def test_a_file_is_not_a_model_folder(mini_dir):
    with pytest.raises(NotADirectoryError, match="config.json"):
        load_tokenizer(mini_dir / "config.json")


def test_half_precision_needs_cuda(mini_dir):
    with pytest.raises(ValueError, match="CUDA"):
        load_model_and_tokenizer(mini_dir, dtype="float16")


def test_hub_ids_are_not_taken_for_local_paths():
    assert not models.is_local_source(models.PAPER_MODEL_ID)
    assert not models.is_local_source("gpt2")
    assert models.is_local_source("/abs/path") and models.is_local_source("a/b/c")


# ----------------------------------------------------------------------------- hook discovery


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Linear(4, 4)


def test_find_mlp_modules_uses_the_first_prefix_and_orders_layers():
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([_Block() for _ in range(3)])
    found = find_mlp_modules(model)
    assert [n for n, _ in found] == ["blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"]
    assert all(m is model.blocks[i].mlp for i, (_, m) in enumerate(found))


def test_model_without_mlp_modules_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no module named .*mlp"):
        find_mlp_modules(model)


# ----------------------------------------------------------------------------- the circuit-sparsity shim

# A miniature of the Hub repo's layout: gpt.py with a GPTConfig that rejects unknown kwargs, a config
# class that imports it as `circuit_sparsity.gpt` and passes `unembed_rank`, and a wrapper that holds
# the GPT as `circuit_model`.
_GPT_PY = '''
import dataclasses
import torch
from torch import nn


@dataclasses.dataclass
class GPTConfig:
    n_layer: int = 2
    d_model: int = 16
    vocab_size: int = 2048


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(c.d_model, 4 * c.d_model), nn.Linear(4 * c.d_model, c.d_model)

    def forward(self, x):
        return self.c_proj(torch.nn.functional.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_2, self.mlp = nn.LayerNorm(c.d_model), MLP(c)

    def forward(self, x):
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(c.vocab_size, c.d_model),
                                              h=nn.ModuleList([Block(c) for _ in range(c.n_layer)])))
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)

    def forward(self, idx):
        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(x)
'''

_CONFIG_PY = '''
from transformers import PretrainedConfig
from circuit_sparsity.gpt import GPTConfig


class CircuitTestConfig(PretrainedConfig):
    model_type = "circuit_test"

    def __init__(self, n_layer=2, d_model=16, vocab_size=2048, unembed_rank=None, **kwargs):
        self.n_layer, self.d_model, self.vocab_size, self.unembed_rank = n_layer, d_model, vocab_size, unembed_rank
        super().__init__(**kwargs)

    def to_circuit_config(self):
        return GPTConfig(n_layer=self.n_layer, d_model=self.d_model, vocab_size=self.vocab_size,
                         unembed_rank=self.unembed_rank)
'''

_MODELING_PY = '''
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput
from circuit_sparsity.gpt import GPT
from .configuration_circuit_test import CircuitTestConfig


class CircuitTestForCausalLM(PreTrainedModel):
    config_class = CircuitTestConfig
    base_model_prefix = "circuit_model"

    def __init__(self, config):
        super().__init__(config)
        self.circuit_model = GPT(config.to_circuit_config())
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_ids, **kwargs):
        return CausalLMOutput(logits=self.circuit_model(input_ids))
'''


@pytest.fixture
def clean_shim():
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == models.SHIM_PACKAGE}
    yield
    for k in [k for k in sys.modules if k.split(".")[0] == models.SHIM_PACKAGE]:
        del sys.modules[k]
    sys.modules.update(saved)


@pytest.fixture
def remote_code_dir(tmp_path, clean_shim) -> Path:
    """A local repo laid out like openai/circuit-sparsity (remote code + gpt.py), 2 layers, width 16."""
    d = tmp_path / "circuit_test"
    d.mkdir()
    (d / "gpt.py").write_text(_GPT_PY)
    (d / "hook_utils.py").write_text("RECORDER = 'hook_utils loaded'\n")
    (d / "configuration_circuit_test.py").write_text(_CONFIG_PY)
    (d / "modeling_circuit_test.py").write_text(_MODELING_PY)
    (d / "config.json").write_text(json.dumps({
        "model_type": "circuit_test", "architectures": ["CircuitTestForCausalLM"],
        "n_layer": 2, "d_model": 16, "vocab_size": 2048, "unembed_rank": 8,
        "auto_map": {"AutoConfig": "configuration_circuit_test.CircuitTestConfig",
                     "AutoModelForCausalLM": "modeling_circuit_test.CircuitTestForCausalLM"}}))
    gen = torch.Generator().manual_seed(0)
    shapes = {"transformer.wte.weight": (2048, 16), "lm_head.weight": (2048, 16)}
    for i in range(2):
        shapes.update({f"transformer.h.{i}.ln_2.weight": (16,), f"transformer.h.{i}.ln_2.bias": (16,),
                       f"transformer.h.{i}.mlp.c_fc.weight": (64, 16), f"transformer.h.{i}.mlp.c_fc.bias": (64,),
                       f"transformer.h.{i}.mlp.c_proj.weight": (16, 64), f"transformer.h.{i}.mlp.c_proj.bias": (16,)})
    save_file({f"circuit_model.{k}": torch.randn(s, generator=gen) for k, s in shapes.items()},
              str(d / "model.safetensors"), metadata={"format": "pt"})
    train_mini_tokenizer(code_snippets()).save_pretrained(d)
    # the tokenizer of the real repo has no pad token: the loader must set pad = eos
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def test_shim_filters_unknown_config_kwargs(remote_code_dir):
    assert install_config_shim(str(remote_code_dir), is_local=True)
    from circuit_sparsity.gpt import GPTConfig
    import circuit_sparsity.hook_utils as hook_utils

    cfg = GPTConfig(n_layer=3, unembed_rank=5, rtopk=True)
    assert cfg.n_layer == 3 and not hasattr(cfg, "unembed_rank")
    with pytest.raises(TypeError):
        GPTConfig.__mro__[1](n_layer=3, unembed_rank=5)   # the class as gpt.py wrote it rejects them
    assert hook_utils.RECORDER == "hook_utils loaded"


def test_shim_is_a_no_op_for_an_ordinary_model(mini_dir, clean_shim):
    sys.modules.pop(models.SHIM_PACKAGE, None)
    assert not install_config_shim(str(mini_dir), is_local=True)
    assert models.SHIM_PACKAGE not in sys.modules


def test_loader_loads_a_circuit_sparsity_style_repo(remote_code_dir):
    model, tok = load_model_and_tokenizer(remote_code_dir)
    assert model.config.unembed_rank == 8          # passed through the config, dropped by GPTConfig
    assert [n for n, _ in find_mlp_modules(model)] == ["circuit_model.transformer.h.0.mlp",
                                                        "circuit_model.transformer.h.1.mlp"]
    weights = load_file(remote_code_dir / "model.safetensors")
    assert torch.equal(model.circuit_model.transformer.h[1].mlp.c_fc.weight,
                       weights["circuit_model.transformer.h.1.mlp.c_fc.weight"])
    assert tok.pad_token_id == tok.eos_token_id == 2047
    assert not model.training
