"""Attention-processor wrappers: how NAG takes the place of a diffusers processor, and gives it back exactly.

A wrapper keeps the wrapped processor reachable and its signature visible, carries diffusers' registry metadata of
the wrapped class, and is installed with the module's own ``set_processor``; the undo restores the very objects
that were there. NAG follows the processors diffusers installs later (``set_attn_processor``,
``set_default_attn_processor``, ``load_ip_adapter``, ``fuse_qkv_projections``) by wrapping them again.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from nag_guidance.integration.state import NAGState

_MISSING = object()


@contextmanager
def stock_processors(models: Iterable[torch.nn.Module], state: NAGState) -> Iterator[None]:
    """The models' stock processors inside the block (NAG's wrappers taken off), for diffusers methods that find
    processors by class or rebuild them from it; afterwards whatever the models hold is wrapped again."""
    for model in models:
        unwrap_processors(model, state)
    try:
        yield
    finally:
        for rewrap in state.rewrappers:
            rewrap()


def unwrapped_during(model: torch.nn.Module, method: str, state: NAGState) -> Callable[[], None]:
    """Let ``model.<method>`` see the stock processors, then wrap what it leaves: diffusers'
    ``set_default_attn_processor`` refuses processor classes it does not know, or replaces them silently."""
    if not callable(getattr(model, method, None)):
        return lambda: None
    saved = model.__dict__.get(method, _MISSING)
    original = getattr(model, method)

    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        with stock_processors([model], state):
            return original(*args, **kwargs)

    object.__setattr__(model, method, call)

    def undo() -> None:
        if saved is _MISSING:
            model.__dict__.pop(method, None)
        else:
            object.__setattr__(model, method, saved)

    return undo


def set_processor(attn: torch.nn.Module, processor: Any) -> None:
    if hasattr(attn, "set_processor"):
        attn.set_processor(processor)
    else:
        attn.processor = processor


class ProcessorWrapper:
    """Base for processors that wrap a diffusers attention processor.

    ``Attention.forward`` drops every keyword its processor's ``__call__`` does not declare, so subclasses are
    specialised per wrapped class (``wrapper_for``) with ``__call__`` advertising the wrapped signature.
    Attributes the wrapper does not own (``_attention_backend``, ``_parallel_config``...) are read from and
    written to the wrapped processor, so ``set_attention_backend`` keeps working.

    Each wrapper class carries the diffusers registry metadata of the class it wraps, so diffusers' hooks that
    look processors up by class (layer skip for PAG / SLG / SEG guiders) work on NAG-applied models. (Answering
    ``__class__`` with the wrapped class would do more, but misleads ``torch.compile``.) Constructed without
    arguments, as diffusers' ``load_ip_adapter`` rebuilds processors (``type(processor)()``), it gives a fresh
    processor of the wrapped class, which NAG re-wraps at the next call.
    """

    _own = frozenset({"processor", "state", "layer", "index", "signature"})
    wrapped_class: type = object

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            return cls.wrapped_class()
        return super().__new__(cls)

    def __init__(self, processor: Any, state: NAGState, layer: str) -> None:
        object.__setattr__(self, "processor", processor)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "index", state.add_layer(layer))
        object.__setattr__(self, "signature", inspect.signature(processor.__call__))

    def __getattr__(self, name: str) -> Any:
        if name in ProcessorWrapper._own:
            raise AttributeError(name)
        return getattr(self.processor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.processor, name, value)

    def run(self, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


_WRAPPER_CLASSES: dict[tuple[type, type], type] = {}


def wrapper_for(base: type[ProcessorWrapper], processor: Any, state: NAGState, layer: str) -> ProcessorWrapper:
    """An instance of ``base`` wrapping ``processor``, whose ``__call__`` shows the processor's signature."""
    key = (base, type(processor))
    cls = _WRAPPER_CLASSES.get(key)
    if cls is None:
        wrapped = inspect.signature(type(processor).__call__)

        def __call__(self: ProcessorWrapper, *args: Any, **kwargs: Any) -> Any:
            return self.run(*args, **kwargs)

        __call__.__signature__ = wrapped
        cls = type(f"NAG{type(processor).__name__}", (base,), {"__call__": __call__, "wrapped_class": type(processor)})
        _register_like(cls, type(processor))
        _WRAPPER_CLASSES[key] = cls
    return cls(processor, state, layer)


def _register_like(cls: type, wrapped: type) -> None:
    from diffusers.hooks._helpers import AttentionProcessorRegistry

    try:
        metadata = AttentionProcessorRegistry.get(wrapped)
    except ValueError:
        return  # diffusers does not know the wrapped class either
    AttentionProcessorRegistry.register(cls, metadata)


def matches_layer(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a module name is one of the family's text-attention layers: a pattern with a dot is matched
    against the whole name (``fnmatch``), one without against the name's last component."""
    last = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) if "." in p else last == p for p in patterns)


def wrap_processors(
    model: torch.nn.Module, names: tuple[str, ...], base: type[ProcessorWrapper], state: NAGState, prefix: str
) -> list[str]:
    """Wrap the processor of every attention module whose name matches ``names`` (see ``matches_layer``) and is
    not wrapped for ``state`` yet; returns the names of all the layers that are wrapped for ``state`` now.

    Calling it again re-wraps processors that diffusers replaced since (``set_attn_processor``,
    ``set_default_attn_processor``, ``load_ip_adapter``, ``fuse_qkv_projections``): NAG follows them.
    """
    wrapped = []
    try:
        for name, module in model.named_modules():
            if matches_layer(name, names) and hasattr(module, "processor"):
                if isinstance(module.processor, ProcessorWrapper) and module.processor.state is not state:
                    raise ValueError(
                        f"{prefix}.{name} already has NAG installed (by another nag.apply, nag.attach or NAG "
                        "guider on the same denoiser): remove that one first"
                    )
                if not _wrapped_for(module.processor, state):
                    set_processor(module, wrapper_for(base, module.processor, state, f"{prefix}.{name}"))
                wrapped.append(f"{prefix}.{name}")
    except Exception:
        unwrap_processors(model, state)
        raise
    return wrapped


def unwrap_processors(model: torch.nn.Module, state: NAGState) -> None:
    """Put the wrapped processor back wherever a wrapper for ``state`` is installed (the very object that was
    wrapped: the original one, or the one diffusers installed later and NAG followed)."""
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if _wrapped_for(processor, state):
            set_processor(module, processor.processor)


def _wrapped_for(processor: Any, state: NAGState) -> bool:
    return isinstance(processor, ProcessorWrapper) and processor.state is state
