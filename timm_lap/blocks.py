"""Find the residual blocks of a model and where each keeps its shortcut.

A block is described by a :class:`BlockSpec`: its qualified name, the module, and
the module whose *output* is the block's shortcut (``None`` means the identity, i.e.
the block input). Rules are tried in order; the first that answers wins:

1. a boolean skip flag (``has_skip``, ``has_residual``, ``use_res_connect``:
   timm EfficientNet/MobileNet blocks, torchvision MobileNet);
2. families whose missing shortcut means "no residual" (timm RegNet, ByobNet);
3. a projection attribute (``downsample``, ``shortcut``, ...; ``proj`` only when the
   block's forward adds ``self.proj(...)``, as torchvision's RegNet does): ``None`` or
   ``nn.Identity`` is the identity, another module is hooked for its output;
4. the generic rule: a module whose class name looks like a block and whose forward
   adds something; its shortcut is the identity and its output must have its
   input's shape (checked on the first forward).
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch.nn as nn

__all__ = ["BlockSpec", "BlockSelector", "find_blocks", "select_blocks"]

BlockSelector = Union[str, nn.Module, "tuple[str | nn.Module, str | nn.Module]"]

SKIP_FLAGS = ("has_skip", "has_residual", "use_res_connect")
PROJECTION_ATTRS = ("downsample", "shortcut", "proj_shortcut", "skip")
# Names too common to trust alone: a projection only when the block's forward adds its output.
ADDED_PROJECTION_ATTRS = ("proj",)
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
    for attr in ADDED_PROJECTION_ATTRS:
        if (attr in module._modules or attr in module.__dict__) and _forward_adds_call(type(module), attr):
            value = getattr(module, attr)
            if value is None or isinstance(value, nn.Identity):
                return BlockSpec("", module, None, f"projection:{attr}=identity")
            if isinstance(value, nn.Module):
                return BlockSpec("", module, value, f"projection:{attr}")
    return None


def _forward_adds_call(cls: type[nn.Module], attr: str) -> bool:
    """Whether ``cls.forward`` adds the output of ``self.<attr>(...)`` to something."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    call = rf"self\.{attr}\([^()]*\)"
    return re.search(rf"{call}\s*\+|\+\s*{call}", source) is not None


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


def _forward_adds(cls: type[nn.Module]) -> bool:
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


def select_blocks(
    model: nn.Module,
    selectors: Sequence[BlockSelector] | Mapping[str | nn.Module, str | nn.Module] | str | nn.Module,
) -> list[BlockSpec]:
    """Resolve ``blocks=`` to specs, in model order.

    Each selector is a module name, a name glob or a module; a ``(block, projection)`` pair (or a mapping
    ``{block: projection}``) also names the module whose output is that block's shortcut, by module, full name
    or name relative to the block (``("layer1.0", "proj")``).
    """
    if isinstance(selectors, (str, nn.Module)):
        selectors = [selectors]
    elif isinstance(selectors, Mapping):
        selectors = list(selectors.items())
    named = list(model.named_modules())
    by_id = {id(m): n for n, m in named}
    by_name = dict(named)
    chosen: dict[str, nn.Module] = {}
    projections: dict[str, nn.Module] = {}
    for sel in selectors:
        projection = None
        if isinstance(sel, tuple):
            if len(sel) != 2:
                raise TypeError(f"blocks=: a pair is (block, projection); got a tuple of {len(sel)}.")
            sel, projection = sel
        hits = _resolve(model, sel, named, by_id)
        chosen.update(hits)
        if projection is not None:
            for name in hits:
                projections[name] = _resolve_projection(model, name, projection, by_id, by_name)
    order = {n: i for i, (n, _) in enumerate(named)}
    specs = []
    for name in sorted(chosen, key=order.__getitem__):
        module = chosen[name]
        if name in projections:
            specs.append(BlockSpec(name, module, projections[name], "explicit:projection"))
            continue
        result = classify(module, name)
        if isinstance(result, BlockSpec):
            specs.append(result)
        else:  # the user said it is a block: trust them, identity shortcut, shape checked at first forward
            specs.append(BlockSpec(name, module, None, "explicit:identity"))
    return specs


def _resolve(model: nn.Module, sel: Any, named: list, by_id: dict[int, str]) -> dict[str, nn.Module]:
    if isinstance(sel, nn.Module):
        if id(sel) not in by_id:
            raise ValueError(f"blocks=: the module {type(sel).__name__} is not a submodule of {type(model).__name__}.")
        return {by_id[id(sel)]: sel}
    if isinstance(sel, str):
        pattern = _glob_to_regex(sel)
        hits = {n: m for n, m in named if n and pattern.fullmatch(n)}
        if not hits:
            raise ValueError(
                f"blocks=: {sel!r} matches no module of {type(model).__name__}. "
                f"Module names look like: {_name_examples(named)}."
            )
        return hits
    raise TypeError(
        "blocks= takes module names, name globs or modules (and (block, projection) pairs or a "
        f"{{block: projection}} mapping); got {type(sel).__name__}."
    )


def _resolve_projection(model: nn.Module, block: str, projection: Any, by_id: dict[int, str],
                        by_name: dict[str, nn.Module]) -> nn.Module:
    if isinstance(projection, nn.Module):
        if id(projection) not in by_id:
            raise ValueError(f"blocks=: the projection of {block!r} is not a submodule of {type(model).__name__}.")
        return projection
    if isinstance(projection, str):
        for name in (f"{block}.{projection}", projection):
            if name in by_name:
                return by_name[name]
        raise ValueError(
            f"blocks=: no module {projection!r} (neither {block}.{projection} nor a full name) for the projection "
            f"of {block!r}."
        )
    raise TypeError(f"blocks=: a projection is a module or a module name; got {type(projection).__name__}.")


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
