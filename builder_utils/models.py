"""Loading the model every stage runs on, finding its MLP modules, and the offline mini model.

One loader serves every model: the paper's `openai/circuit-sparsity` from the Hub (remote code) and
the small GPT-2 this project builds locally so the whole pipeline runs offline (`build_mini_model`).
Both go through `load_model_and_tokenizer`, and both are hooked through `find_mlp_modules`, so the
offline path exercises exactly the code that runs on the real model.

The circuit-sparsity config shim (HF_DATASETS.md §5): the Hub repo's `config.py` does
`from circuit_sparsity.gpt import GPTConfig` and passes fields (`unembed_rank`, `rtopk`, ...) that the
`GPTConfig` of `gpt.py` does not accept. The release worked around it by exposing the repo's own
`gpt.py`/`hook_utils.py` as a `circuit_sparsity` package and filtering unknown kwargs out of
`GPTConfig.__init__`. `install_config_shim` does the same, and only when the model repo ships a
`gpt.py` (or a `circuit_sparsity` package is installed), so it is a no-op for ordinary models.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import sys
import tempfile
import types
from pathlib import Path

import torch

PAPER_MODEL_ID = "openai/circuit-sparsity"
EOS_TOKEN = "<|endoftext|>"
RESERVED_TOKEN = "<|reserved_{}|>"     # fills a mini vocabulary up to its size (see train_mini_tokenizer)
SHIM_PACKAGE = "circuit_sparsity"        # what the Hub repo's config.py imports
SHIM_FILES = ("hook_utils.py", "gpt.py")  # gpt.py may import hook_utils, so it is loaded first
MLP_NAME_RE = re.compile(r"^(.*?)(\d+)(\.mlp)$")
HALF_DTYPES = (torch.float16, torch.bfloat16)

# Mini model defaults (see build_mini_model for why these values).
MINI_VOCAB_SIZE = 2048          # the real tinypython_2k vocabulary size; eos is the last id (2047)
MINI_N_LAYER = 8                # the real model has 8 blocks; the atlas hooks all of them
MINI_N_EMBD = 128               # residual width = number of `.mlp` output channels
MINI_N_HEAD = 4
MINI_N_POSITIONS = 512          # >= 256 tokens, covers the prompts (the 11A filter uses max_length 512)
MINI_INITIALIZER_RANGE = 0.04   # sets the typical channel's mean |act| (~0.03)
MINI_CHANNEL_SPREAD = 1.0       # std of log10 of a per-channel gain on the MLP output (decades)
MINI_ACTIVATION = "gelu"        # one fused kernel; GPT-2's "gelu_new" is five elementwise ops, ~40 % of CPU time


# ----------------------------------------------------------------------------- loading


def is_local_source(source: str | os.PathLike) -> bool:
    """A Hub id is `name` or `owner/name`; anything that exists or looks like a path is local."""
    s = str(source)
    if Path(s).expanduser().exists():
        return True
    if s.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in s or s.count("/") > 1:
        return True
    return s in (".", "..")


def _resolve(source: str | os.PathLike) -> tuple[str, bool]:
    """(string to pass to from_pretrained, is_local). A missing local path fails here, not on the Hub."""
    if not is_local_source(source):
        return str(source), False
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path {str(source)!r} does not exist (looked for a local folder, "
                                f"not a Hub id)")
    if not path.is_dir():
        raise NotADirectoryError(f"model path {str(source)!r} is a file; expected a folder written by "
                                 f"save_pretrained")
    return str(path), True


def _find_repo_file(source: str, is_local: bool, filename: str, revision: str | None) -> Path | None:
    if is_local:
        p = Path(source) / filename
        return p if p.is_file() else None
    try:  # a Hub repo without that file (an ordinary model) is the common case: no shim then
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(source, filename, revision=revision))
    except Exception:
        return None


def _filter_unknown_kwargs(config_cls: type) -> type:
    """A subclass of `config_cls` whose constructor drops kwargs it does not declare."""
    if getattr(config_cls, "_csp_atlas_filters_kwargs", False):
        return config_cls
    if dataclasses.is_dataclass(config_cls):
        known = {f.name for f in dataclasses.fields(config_cls) if f.init}
    else:
        known = set(inspect.signature(config_cls.__init__).parameters) - {"self"}

    class FilteredConfig(config_cls):
        _csp_atlas_filters_kwargs = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{k: v for k, v in kwargs.items() if k in known})

    FilteredConfig.__name__ = FilteredConfig.__qualname__ = config_cls.__name__
    FilteredConfig.__module__ = config_cls.__module__
    return FilteredConfig


def install_config_shim(source: str, *, is_local: bool, revision: str | None = None) -> bool:
    """Make `circuit_sparsity.gpt.GPTConfig` importable and tolerant of unknown kwargs.

    Uses the model repo's own `gpt.py`/`hook_utils.py` when it ships them (the internal version the
    checkpoint was written with), else an installed `circuit_sparsity` package. Returns whether a
    shim is in place; False (and nothing changed) for models that need none.
    """
    files = {name: _find_repo_file(source, is_local, name, revision) for name in SHIM_FILES}
    if files["gpt.py"] is not None:
        package = types.ModuleType(SHIM_PACKAGE)
        package.__path__ = [str(files["gpt.py"].parent)]
        package.__package__ = SHIM_PACKAGE
        sys.modules[SHIM_PACKAGE] = package
        for name, path in files.items():
            if path is None:
                continue
            mod_name = f"{SHIM_PACKAGE}.{name[:-3]}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            module.__package__ = SHIM_PACKAGE
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
            setattr(package, name[:-3], module)
        gpt = sys.modules[f"{SHIM_PACKAGE}.gpt"]
    elif importlib.util.find_spec(SHIM_PACKAGE) is not None:
        try:
            gpt = importlib.import_module(f"{SHIM_PACKAGE}.gpt")
        except ImportError:
            return False
    else:
        return False
    if hasattr(gpt, "GPTConfig"):
        gpt.GPTConfig = _filter_unknown_kwargs(gpt.GPTConfig)
    return True


def _pretrained_kwargs(is_local: bool, revision: str | None) -> dict:
    kw = {"trust_remote_code": True}
    if is_local:
        kw["local_files_only"] = True   # never fall through to a Hub lookup that hangs offline
    elif revision is not None:
        kw["revision"] = revision
    return kw


def _load_tokenizer(source: str, is_local: bool, revision: str | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **_pretrained_kwargs(is_local, revision))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(path_or_id: str | os.PathLike, *, revision: str | None = None):
    """The model's tokenizer alone (same rules as load_model_and_tokenizer), pad = eos if it has none."""
    source, is_local = _resolve(path_or_id)
    install_config_shim(source, is_local=is_local, revision=revision)   # a remote tokenizer may load the config
    return _load_tokenizer(source, is_local, revision)


def _resolve_dtype(dtype, device: str) -> torch.dtype:
    if isinstance(dtype, str):
        names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
                 "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        dtype = names[dtype]
    on_cuda = torch.device(device).type == "cuda"
    if dtype is None:
        return torch.float32
    if dtype in HALF_DTYPES and not on_cuda:
        raise ValueError(f"dtype {dtype} needs a CUDA device (got device={device!r}); use float32 on CPU")
    if dtype not in (torch.float32, *HALF_DTYPES):
        raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
    return dtype


def load_model_and_tokenizer(model_id_or_path: str | os.PathLike, *, revision: str | None = None,
                             device: str = "cpu", dtype: torch.dtype | str | None = None):
    """Load any causal LM the way the release loaded `openai/circuit-sparsity`.

    AutoModelForCausalLM/AutoTokenizer with trust_remote_code=True, the GPTConfig kwargs shim when the
    repo needs it, pad = eos, eval mode. dtype defaults to float32; float16/bfloat16 only on CUDA
    (the release extracted in float16 on a GPU). A local folder is loaded with local_files_only.
    """
    from transformers import AutoModelForCausalLM

    source, is_local = _resolve(model_id_or_path)
    torch_dtype = _resolve_dtype(dtype, device)
    install_config_shim(source, is_local=is_local, revision=revision)
    tokenizer = _load_tokenizer(source, is_local, revision)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype,
                                                 **_pretrained_kwargs(is_local, revision))
    model = model.to(device).eval()
    return model, tokenizer


# ----------------------------------------------------------------------------- hook discovery


def find_mlp_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The `.mlp` module of every block, layer 0..N-1 in order.

    The first name matching `<prefix><digits>.mlp` fixes the prefix (`transformer.h.` for GPT-2,
    `circuit_model.transformer.h.` for circuit-sparsity); all layers under that prefix are returned.
    """
    modules = dict(model.named_modules())
    prefix = None
    for name in modules:
        m = MLP_NAME_RE.match(name)
        if m:
            prefix = m.group(1)
            break
    if prefix is None:
        raise ValueError(f"{type(model).__name__} has no module named '<prefix><layer>.mlp' "
                         f"(e.g. 'transformer.h.0.mlp'); cannot hook the MLP outputs")
    layers = sorted(int(MLP_NAME_RE.match(n).group(2)) for n in modules
                    if MLP_NAME_RE.match(n) and MLP_NAME_RE.match(n).group(1) == prefix)
    if layers != list(range(len(layers))):
        raise ValueError(f"MLP modules '{prefix}<layer>.mlp' are not numbered 0..N-1: found layers {layers}")
    return [(f"{prefix}{i}.mlp", modules[f"{prefix}{i}.mlp"]) for i in layers]


def max_positions(model: torch.nn.Module) -> int | None:
    """The model's context length, if its config declares one (GPT-2: n_positions; circuit: block_size)."""
    configs = [getattr(model, "config", None)]
    inner = getattr(model, "circuit_model", None)
    configs.append(getattr(inner, "config", None))
    for cfg in configs:
        for attr in ("n_positions", "max_position_embeddings", "block_size", "n_ctx"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


# ----------------------------------------------------------------------------- the offline mini model


def train_mini_tokenizer(texts: list[str], vocab_size: int = MINI_VOCAB_SIZE, *,
                         model_max_length: int = MINI_N_POSITIONS):
    """A deterministic byte-level BPE tokenizer trained on `texts`, shaped like tinypython_2k.

    256 byte tokens + up to vocab_size - 257 merges (GPT-2-style word split first, so keywords stay
    whole tokens), then `<|endoftext|>` as the LAST id, vocab_size - 1 = 2047 as in the real
    tokenizer; pad = eos, no special tokens added on encode. Every byte string is encodable.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_mini_tokenizer: no non-empty texts to train on")
    if vocab_size < 258:
        raise ValueError(f"vocab_size must be >= 258 (256 bytes + 1 merge + eos), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # Templated code has few distinct words, so BPE can run out of merges before vocab_size - 1.
    # Reserved (never produced) tokens fill the gap, so eos is always id vocab_size - 1.
    n_learned = tok.get_vocab_size()
    tok.add_special_tokens([RESERVED_TOKEN.format(i) for i in range(vocab_size - 1 - n_learned)])
    tok.add_special_tokens([EOS_TOKEN])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                      model_max_length=model_max_length)
    if wrapped.convert_tokens_to_ids(EOS_TOKEN) != vocab_size - 1 or len(wrapped) != vocab_size:
        raise ValueError(f"train_mini_tokenizer: {EOS_TOKEN!r} did not become id {vocab_size - 1}")
    return wrapped


def build_mini_model(out_dir: str | os.PathLike, texts: list[str], *, seed: int = 0,
                     n_layer: int = MINI_N_LAYER, n_embd: int = MINI_N_EMBD, n_head: int = MINI_N_HEAD,
                     vocab_size: int = MINI_VOCAB_SIZE, n_positions: int = MINI_N_POSITIONS,
                     initializer_range: float = MINI_INITIALIZER_RANGE,
                     channel_spread: float = MINI_CHANNEL_SPREAD) -> Path:
    """Write a small, seeded, untrained GPT-2 + its tokenizer to `out_dir`; load it with load_model_and_tokenizer.

    It stands in for `openai/circuit-sparsity` offline: same loading path (AutoModelForCausalLM,
    trust_remote_code, safetensors), same `<prefix>{i}.mlp` hook discovery, 8 layers, a 2048-token
    vocabulary with eos = 2047. It is narrow (n_embd = 128 channels instead of 2048) so a whole mini
    atlas extracts in about a minute on 2 CPU cores. Same seed and texts -> identical bytes.

    Why these magnitudes: stage 13 keeps a channel when its mean |act| over a unit's prompts exceeds
    ε ∈ {0.001, 0.1, 0.5}. A randomly initialised GPT-2 gives every channel about the same mean |act|
    (≈ 0.01 at GPT-2's default initializer_range 0.02, ≈ 0.3 at 0.1), so the ε grid would yield
    all-full or all-empty masks. Two knobs fix that:
    * `initializer_range` = 0.04 puts the typical channel near ε = 0.03 (std of every weight; GPT-2
      still scales the residual projections by 1/sqrt(2·n_layer));
    * `channel_spread` = 1.0: each MLP output channel is multiplied by a seeded log-normal gain
      10**(1.0·z), z ~ N(0, 1), so per-channel means span several decades and each ε cuts
      the channels somewhere different.
    Measured on 325 units of 4 11A prompts (every 4th pair), all 8 layers: 94 % of (unit, layer,
    channel) means pass ε = 0.001, 34 % pass ε = 0.1 and 15 % pass ε = 0.5 (per layer 91-96 %,
    27-40 %, 10-19 %), and at each ε 15-28 % of the channels pass for some units but not others.

    Caveat: GPT-2's MLP output is dense, so every channel is non-zero on every prompt, firing rates
    are ~1 and the consistency threshold C barely bites on the mini model. The real model applies
    AbsTopK sparsity to `mlp_out` (about 1 in 4 channels non-zero per token), where C matters.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    out_dir = Path(out_dir)
    tokenizer = train_mini_tokenizer(texts, vocab_size, model_max_length=n_positions)
    longest = max(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    if longest > n_positions:
        raise ValueError(f"the longest text is {longest} tokens, more than n_positions={n_positions}; "
                         f"raise n_positions")
    eos_id = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, initializer_range=initializer_range, bos_token_id=eos_id,
                        eos_token_id=eos_id, pad_token_id=eos_id, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, tie_word_embeddings=True, activation_function=MINI_ACTIVATION)
    with torch.random.fork_rng(devices=[]):    # seeded init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            gains = 10.0 ** (channel_spread * torch.randn(n_layer, n_embd))
            for layer, (_, mlp) in enumerate(find_mlp_modules(model)):
                mlp.c_proj.weight.mul_(gains[layer])    # Conv1D weight is (n_inner, n_embd): scale outputs
    # Write next to out_dir, then move the files in, config.json last: an interrupted build never
    # leaves a folder that loads.
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for f in sorted(Path(tmp).iterdir(), key=lambda f: f.name == "config.json"):
            os.replace(f, out_dir / f.name)
    return out_dir
