"""The concept inventory: 43 AST node types, 63 "builtins", the 58 keyword concepts.

Everything here is data taken from the release (ALGORITHMS.md §0.2, §2) plus the
naming rules that tie pair keys and concept keys together. No I/O.
"""

from __future__ import annotations

# The 43 AST node types of the release ("small" mode), sorted.
AST_NODES: tuple[str, ...] = tuple(sorted("""
AnnAssign Assert Assign AsyncFor AsyncFunctionDef AsyncWith Attribute AugAssign BinOp BoolOp Break Call ClassDef
Compare Continue Delete Dict DictComp For FunctionDef GeneratorExp Global If IfExp Import ImportFrom Lambda ListComp
Nonlocal Pass Raise Return Set SetComp Slice Starred Subscript Try UnaryOp While With Yield YieldFrom
""".split()))

# Pairs of an AST node with no compatible builtin use this sentinel as their "builtin".
# It is a pipeline marker, not a Python builtin, but the paper counts it among the 63.
ISOLATED = "_isolated_"

# The 62 real builtins of the release.
REAL_BUILTINS: tuple[str, ...] = tuple(sorted("""
AttributeError Exception FileNotFoundError ImportError IndexError KeyError NotImplementedError OSError RuntimeError
StopIteration TypeError ValueError ZeroDivisionError abs all any bool bytearray bytes callable classmethod
complex delattr dict enumerate filter float frozenset getattr hasattr hash id input int isinstance issubclass iter
len list map max memoryview min next object open print property range repr reversed round set setattr sorted
staticmethod str sum super tuple type zip
""".split()))

# The 63 "builtins" (code-point order puts `_isolated_` between the exceptions and lowercase names).
BUILTIN_OBJECTS: tuple[str, ...] = tuple(sorted(REAL_BUILTINS + (ISOLATED,)))

# The six AST nodes whose only pair is (node, _isolated_): their universal mask is one
# un-marginalised pair mask (PAPER_CLAIMS F17), and they are the paper's "atomicity" six.
ATOMICITY_AST: tuple[str, ...] = ("Assert", "Break", "Continue", "Import", "ImportFrom", "Pass")

_BUILTIN_KEYWORDS = """
list set map open type hash id all any sum min max next input len range filter print int float str bool round
zip sorted super iter object bytes dict tuple property complex reversed
""".split()

# concept -> (keyword, forbidden AST node types). Builtins also forbid a call to their own name.
# Insertion order is the release's; every consumer iterates sorted(KEYWORD_MAP).
KEYWORD_MAP: dict[str, dict] = {
    "ast__Import": {"keyword": "import", "forbidden_nodes": ["Import", "ImportFrom"]},
    "ast__ImportFrom": {"keyword": "from", "forbidden_nodes": ["Import", "ImportFrom"]},
    "ast__Break": {"keyword": "break", "forbidden_nodes": ["Break"]},
    "ast__Pass": {"keyword": "pass", "forbidden_nodes": ["Pass"]},
    "ast__Continue": {"keyword": "continue", "forbidden_nodes": ["Continue"]},
    "ast__Assert": {"keyword": "assert", "forbidden_nodes": ["Assert"]},
    "ast__If": {"keyword": "if", "forbidden_nodes": ["If", "IfExp"]},
    "ast__While": {"keyword": "while", "forbidden_nodes": ["While"]},
    "ast__For": {"keyword": "for",
                 "forbidden_nodes": ["For", "AsyncFor", "ListComp", "SetComp", "DictComp", "GeneratorExp"]},
    "ast__Return": {"keyword": "return", "forbidden_nodes": ["Return"]},
    "ast__With": {"keyword": "with", "forbidden_nodes": ["With", "AsyncWith"]},
    "ast__Raise": {"keyword": "raise", "forbidden_nodes": ["Raise"]},
    "ast__Delete": {"keyword": "del", "forbidden_nodes": ["Delete"]},
    "ast__Global": {"keyword": "global", "forbidden_nodes": ["Global"]},
    "ast__Nonlocal": {"keyword": "nonlocal", "forbidden_nodes": ["Nonlocal"]},
    "ast__Lambda": {"keyword": "lambda", "forbidden_nodes": ["Lambda"]},
    "ast__Yield": {"keyword": "yield", "forbidden_nodes": ["Yield", "YieldFrom"]},
    "ast__YieldFrom": {"keyword": "yield", "forbidden_nodes": ["Yield", "YieldFrom"]},
    "ast__Try": {"keyword": "try", "forbidden_nodes": ["Try"]},
    "ast__ClassDef": {"keyword": "class", "forbidden_nodes": ["ClassDef"]},
    "ast__FunctionDef": {"keyword": "def", "forbidden_nodes": ["FunctionDef", "AsyncFunctionDef"]},
    "ast__AsyncFor": {"keyword": "async", "forbidden_nodes": ["AsyncFor", "AsyncFunctionDef", "AsyncWith"]},
    "ast__AsyncFunctionDef": {"keyword": "async",
                              "forbidden_nodes": ["AsyncFor", "AsyncFunctionDef", "AsyncWith"]},
    "ast__AsyncWith": {"keyword": "async", "forbidden_nodes": ["AsyncFor", "AsyncFunctionDef", "AsyncWith"]},
    **{f"builtin__{name}": {"keyword": name, "forbidden_nodes": [], "forbidden_names": [name]}
       for name in _BUILTIN_KEYWORDS},
}

# The 48 concepts with no keyword token (no checker confound applies).
TOKENLESS: tuple[str, ...] = ()  # filled below, once concept_keys() exists

PAIR_SEP = "__"


def pair_key(ast_node: str, builtin: str) -> str:
    """`For__list`, `Assert___isolated_` (three underscores: the separator plus the sentinel's own)."""
    return f"{ast_node}{PAIR_SEP}{builtin}"


def split_pair_key(key: str) -> tuple[str, str]:
    """Inverse of `pair_key`; splits on the *first* `__` so `Assert___isolated_` -> (Assert, _isolated_)."""
    ast_node, sep, builtin = key.partition(PAIR_SEP)
    if not sep or not ast_node or not builtin:
        raise ValueError(f"not a pair key (expected '<ast>__<builtin>'): {key!r}")
    return ast_node, builtin


def concept_key(kind: str, name: str) -> str:
    """`ast__For`, `builtin__len`, `builtin___isolated_`."""
    if kind not in ("ast", "builtin"):
        raise ValueError(f"concept kind must be 'ast' or 'builtin', got {kind!r}")
    return f"{kind}{PAIR_SEP}{name}"


def split_concept_key(key: str) -> tuple[str, str]:
    """`builtin___isolated_` -> ('builtin', '_isolated_')."""
    kind, sep, name = key.partition(PAIR_SEP)
    if not sep or kind not in ("ast", "builtin") or not name:
        raise ValueError(f"not a concept key (expected 'ast__<Node>' or 'builtin__<name>'): {key!r}")
    return kind, name


def concept_type(key: str) -> str:
    return split_concept_key(key)[0]


def concept_keys(ast_nodes=AST_NODES, builtins=BUILTIN_OBJECTS) -> list[str]:
    """All concept keys, sorted (the order h5py and the release use)."""
    return sorted([concept_key("ast", a) for a in ast_nodes] + [concept_key("builtin", b) for b in builtins])


TOKENLESS = tuple(k for k in concept_keys() if k not in KEYWORD_MAP)
