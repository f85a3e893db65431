"""Find the residual blocks of a model and where each keeps its shortcut.

A block is described by a :class:`BlockSpec`: its qualified name, the module, and
the module whose *output* is the block's shortcut (``None`` means the identity, i.e.
the block input). Rules are tried in order; the first that answers wins:

1. a boolean skip flag (``has_skip``, ``has_residual``, ``use_res_connect``:
   timm EfficientNet/MobileNet blocks, torchvision MobileNet);
2. families whose missing shortcut means "no residual" (timm RegNet, ByobNet);
3. a projection attribute (``downsample``, ``shortcut``, ...): ``None`` or
   ``nn.Identity`` is the identity, another module is hooked for its output;
4. the generic rule: a module whose class name looks like a block and whose forward
   adds something; its shortcut is the identity and its output must have its
   input's shape (checked on the first forward).
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import torch.nn as nn

__all__ = ["BlockSpec", "BlockSelector", "find_blocks", "select_blocks"]

BlockSelector = Union[str, nn.Module]

SKIP_FLAGS = ("has_skip", "has_residual", "use_res_connect")
PROJECTION_ATTRS = ("downsample", "shortcut", "proj_shortcut", "skip")
# In these timm families a shortcut attribute of None means "this block has no residual".
OPTIONAL_SHORTCUT_MODULES = ("timm.models.regnet", "timm.models.byobnet")
BLOCK_NAME_PATTERN = re.compile(r"block|bottleneck|basic|residual|resunit", re.IGNORECASE)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class BlockSpec:
    """A residual block: ``displacement = module(x) - shortcut(x)``."""

    name: str
    module: nn.Module
    shortcut: nn.Module | None  # None: identity (the block input)
    rule: str


@dataclass(frozen=True)
class _NotResidual:
    reason: str


def _skip_flag_rule(module: nn.Module) -> BlockSpec | _NotResidual | None:
    for flag in SKIP_FLAGS:
        value = getattr(module, flag, None)
        if isinstance(value, bool):
            if not value:
                return _NotResidual(f"{flag}=False (stride or channel change, or skip disabled)")
            return BlockSpec("", module, None, f"flag:{flag}")
    return None


def _optional_shortcut_rule(module: nn.Module) -> BlockSpec | _NotResidual | None:
    if not type(module).__module__.startswith(OPTIONAL_SHORTCUT_MODULES):
        return None
    for attr in ("downsample", "shortcut"):
        if attr in module._modules or hasattr(module, attr):
            value = getattr(module, attr)
            if value is None:
                return _NotResidual(f"{attr} is None: this block has no residual connection")
            if isinstance(value, nn.Module):
                shortcut = None if isinstance(value, nn.Identity) else value
                return BlockSpec("", module, shortcut, f"projection:{attr}")
    return None


def _projection_rule(module: nn.Module) -> BlockSpec | _NotResidual | None:
    if not _looks_like_block(module):
        return None
    for attr in PROJECTION_ATTRS:
        if attr in module._modules or attr in module.__dict__:
            value = getattr(module, attr)
            if value is None or isinstance(value, nn.Identity):
                return BlockSpec("", module, None, f"projection:{attr}=identity")
            if isinstance(value, nn.Module):
                return BlockSpec("", module, value, f"projection:{attr}")
    return None


def _generic_rule(module: nn.Module) -> BlockSpec | _NotResidual | None:
    if not _looks_like_block(module):
        return None
    if not _forward_adds(type(module)):
        return _NotResidual("class name looks like a block but its forward adds nothing")
    return BlockSpec("", module, None, "generic:identity")


RULES = (_skip_flag_rule, _optional_shortcut_rule, _projection_rule, _generic_rule)


def _looks_like_block(module: nn.Module) -> bool:
    if isinstance(module, _CONTAINERS) or not module._modules:
        return False
    return bool(BLOCK_NAME_PATTERN.search(type(module).__name__))


def _forward_adds(cls: type) -> bool:
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return True  # no source to read (e.g. compiled or generated): let the shape check decide
    return "+" in source or "add" in source


def classify(module: nn.Module, name: str = "") -> BlockSpec | _NotResidual | None:
    """Apply the rules to one module: a spec, a reason it is not residual, or None."""
    for rule in RULES:
        result = rule(module)
        if result is not None:
            if isinstance(result, BlockSpec):
                return BlockSpec(name, module, result.shortcut, result.rule)
            return result
    return None


def find_blocks(model: nn.Module) -> tuple[list[BlockSpec], dict[str, str]]:
    """Walk ``model`` top-down; returns (blocks, skipped) where skipped maps name -> reason.

    The walk does not descend into a block it tracks, so nested helpers of a block
    (attention, MLP, squeeze-excite) are never counted as blocks of their own.
    """
    blocks: list[BlockSpec] = []
    skipped: dict[str, str] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            result = classify(child, name)
            if isinstance(result, BlockSpec):
                blocks.append(result)
                continue
            if isinstance(result, _NotResidual):
                skipped[name] = result.reason
            visit(child, name)

    visit(model, "")
    return blocks, skipped


def select_blocks(model: nn.Module, selectors: Sequence[BlockSelector] | str | nn.Module) -> list[BlockSpec]:
    """Resolve ``blocks=`` (names, globs or module objects) to specs, in model order."""
    if isinstance(selectors, (str, nn.Module)):
        selectors = [selectors]
    named = list(model.named_modules())
    by_id = {id(m): n for n, m in named}
    chosen: dict[str, nn.Module] = {}
    for sel in selectors:
        if isinstance(sel, nn.Module):
            if id(sel) not in by_id:
                raise ValueError(
                    f"blocks=: the module {type(sel).__name__} is not a submodule of {type(model).__name__}."
                )
            chosen[by_id[id(sel)]] = sel
        elif isinstance(sel, str):
            pattern = _glob_to_regex(sel)
            hits = [(n, m) for n, m in named if n and pattern.fullmatch(n)]
            if not hits:
                raise ValueError(
                    f"blocks=: {sel!r} matches no module of {type(model).__name__}. "
                    f"Module names look like: {_name_examples(named)}."
                )
            chosen.update(hits)
        else:
            raise TypeError(f"blocks= takes module names, name globs or modules; got {type(sel).__name__}.")
    order = {n: i for i, (n, _) in enumerate(named)}
    specs = []
    for name in sorted(chosen, key=order.__getitem__):
        module = chosen[name]
        result = classify(module, name)
        if isinstance(result, BlockSpec):
            specs.append(result)
        else:  # the user said it is a block: trust them, identity shortcut, shape checked at first forward
            specs.append(BlockSpec(name, module, None, "explicit:identity"))
    return specs


def _glob_to_regex(glob: str) -> re.Pattern:
    """``*`` and ``?`` stay within one name component (``layer1.*`` is layer1's children); ``**`` crosses dots."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = glob[i]
        out.append("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out))


def _name_examples(named: Iterable[tuple[str, nn.Module]], limit: int = 8) -> str:
    names = [n for n, m in named if n and m._modules and not isinstance(m, _CONTAINERS)]
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "") if shown else "(no submodules)"
