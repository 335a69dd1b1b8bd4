"""``nag.apply`` / ``nag.remove``: NAG on a stock diffusers pipeline instance, and exactly undone.

``apply`` (i) gives the instance a subclass of its own class, with the same name, whose ``__call__`` accepts
the ``nag_*`` arguments and whose ``encode_prompt`` also encodes the NAG negative with exactly the options the
pipeline used for the prompt; (ii) lets the family's mechanism hook the denoiser(s). ``remove`` puts the class
back and runs the mechanism's undo actions, which restore the original processor objects and hook handles.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from nag_guidance.config import NAGConfig, get_preset, preset_rule
from nag_guidance.integration.families import detect
from nag_guidance.integration.families.pipelines import quirks_of
from nag_guidance.integration.family import Family
from nag_guidance.integration.handle import NAGHandle, check_negative, check_negative_prompt
from nag_guidance.integration.processors import stock_processors
from nag_guidance.integration.report import inactive_report, report_from_call
from nag_guidance.integration.state import CallInfo, NegativeText, distinct_steps

NAG_CALL_ARGUMENTS = (
    "nag_negative_prompt",
    "nag_negative_prompt_embeds",
    "nag_negative_prompt_attention_mask",
    "nag_negative_pooled_prompt_embeds",
    "nag_scale",
    "nag_tau",
    "nag_alpha",
    "nag_start",
    "nag_end",
    "nag_window",
    "nag_pooled",
)
"""The keyword arguments an applied pipeline's ``__call__`` accepts in addition to the stock ones."""

_IMAGES_PER_PROMPT = ("num_images_per_prompt", "num_videos_per_prompt")

_ON_STOCK_PROCESSORS = ("load_ip_adapter", "set_ip_adapter_scale", "unload_ip_adapter")
"""Pipeline methods that find attention processors by class or rebuild them from it (diffusers' IP-Adapter
loaders): on an applied pipeline they run on the stock processors, which NAG wraps again afterwards."""


@dataclass
class Session:
    """What ``apply`` installed on one pipeline: the denoiser hooks' handle, the defaults, the stock class, and the
    running call (one at a time)."""

    handle: NAGHandle
    defaults: NAGConfig
    base_class: type
    busy: threading.Lock = field(default_factory=threading.Lock)  # held for the whole of each call
    call: CallInfo | None = None  # the running NAG call, while one runs

    @property
    def family(self) -> Family:
        return self.handle.family


def apply(pipe: Any, preset: str | None = None, **defaults: float | str) -> Any:
    """Enable NAG on a diffusers pipeline in place and return it.

    The family is detected from the pipeline class. ``preset`` names a row of the presets table (default: the
    family's own); ``defaults`` (scale, tau, alpha, start, end, window, pooled) override it for every call, and
    the call's ``nag_*`` arguments override both. Applying twice only updates the defaults. An unsupported
    pipeline raises ``NotImplementedError`` and invalid parameters ``ValueError``, leaving the pipeline untouched.
    """
    family = detect(pipe)
    config = get_preset(default_preset(pipe) if preset is None else preset).config
    config = config.with_overrides(**_known_fields(defaults))
    family.pooled_for(config)
    session = _session(pipe)
    if session is not None:
        session.defaults = config
        return pipe
    handle = NAGHandle(family, pipe)
    base = stock_class(pipe)
    pipe.__class__ = _applied_class(base)
    pipe._nag_session = Session(handle, config, base)
    pipe.nag_report = None
    return pipe


def defaults(pipe: Any) -> NAGConfig:
    """The parameters an applied pipeline's calls use where they give no ``nag_*`` value."""
    session = _session(pipe)
    if session is None:
        raise ValueError(f"NAG is not applied to this {type(pipe).__name__}: call nag.apply(pipe) first")
    return session.defaults


def default_preset(pipe: Any) -> str:
    """The preset ``nag.apply(pipe)`` uses when given none: a registered model rule's, else the family's."""
    return preset_rule(pipe) or detect(pipe).preset_for(pipe)


def stock_class(pipe: Any) -> type:
    """The pipeline's own class (an applied pipeline's class is a same-named subclass of it)."""
    return getattr(type(pipe), "_nag_stock_class", type(pipe))


def _steps_of(pipe: Any) -> int | None:
    """The running call's number of denoising steps: the distinct timesteps among those the loop runs (the last
    ``_num_timesteps`` the pipeline records, which img2img takes from the end of the scheduler's; where a pipeline
    records none, those from the index an img2img-style ``strength`` made the scheduler begin at). Second-order
    schedulers evaluate most timesteps twice: a step is a distinct timestep."""
    running = getattr(pipe, "_num_timesteps", None)
    scheduler = getattr(pipe, "scheduler", None)
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or not len(timesteps):
        return running or None
    if not running:
        return distinct_steps(timesteps[getattr(scheduler, "begin_index", None) or 0 :])
    return distinct_steps(timesteps[-running:])


def remove(pipe: Any) -> Any:
    """Undo ``apply``: the pipeline's class, processors and hooks are the original objects again (the denoiser's
    hooks stay while another applied pipeline shares it). No-op if not applied; ``RuntimeError`` while the
    pipeline runs a call (from another thread or its own callback), leaving NAG applied."""
    session = _session(pipe)
    if session is None:
        return pipe
    if session.busy.locked():
        raise RuntimeError(
            f"nag.remove: this {session.base_class.__name__} is running a call (in another thread, or this is its "
            "own step callback): remove NAG after the call returns"
        )
    session.handle.remove()
    pipe.__class__ = session.base_class
    del pipe._nag_session
    pipe.__dict__.pop("nag_report", None)
    return pipe


@contextmanager
def applied(pipe: Any, preset: str | None = None, **defaults: float | str) -> Iterator[Any]:
    """``with nag.applied(pipe): ...`` — NAG inside the block, the stock pipeline after it. If NAG was already
    applied before the block it stays, with the defaults it had before the block."""
    session = _session(pipe)
    before = session.defaults if session is not None else None
    apply(pipe, preset, **defaults)
    try:
        yield pipe
    finally:
        if session is None:
            remove(pipe)
        else:
            session.defaults = before


def is_applied(pipe: Any) -> bool:
    return _session(pipe) is not None


def _session(pipe: Any) -> Session | None:
    """What ``apply`` installed on this very instance (never a class attribute or another object's)."""
    return getattr(pipe, "__dict__", {}).get("_nag_session")


def _known_fields(values: dict[str, Any]) -> dict[str, Any]:
    allowed = {"scale", "tau", "alpha", "start", "end", "window", "pooled"}
    unknown = set(values) - allowed
    if unknown:
        raise TypeError(f"unknown NAG parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return values


_APPLIED_CLASSES: dict[type, type] = {}


def _applied_class(base: type) -> type:
    """``base`` with the NAG call wrapper mixed in, under the same name (so ``save_pretrained`` writes the
    original class name)."""
    cls = _APPLIED_CLASSES.get(base)
    if cls is None:
        methods = {
            "_nag_stock_class": base,
            "__module__": base.__module__,
            "__call__": _with_signature(_NAGPipelineMixin.__call__, base.__call__),
        }
        methods["__call__"].__signature__ = _call_signature(base)
        encode = quirks_of(base).encode_method
        if hasattr(base, encode):
            methods[encode] = _with_signature(_encoding(encode), getattr(base, encode))
        for name in _ON_STOCK_PROCESSORS:
            if hasattr(base, name):
                methods[name] = _with_signature(_on_stock_processors(name), getattr(base, name))
        cls = type(base.__name__, (_NAGPipelineMixin, base), methods)
        cls.__qualname__ = base.__qualname__
        _APPLIED_CLASSES[base] = cls
    return cls


def _with_signature(method: Any, stock: Any) -> Any:
    """``method`` under the stock method's name, docs and signature, so tools that introspect the pipeline (UIs,
    validators, diffusers' own tests) still see the stock parameters."""

    @functools.wraps(stock)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs)

    return wrapper


def _on_stock_processors(name: str) -> Any:
    """The stock pipeline method ``name``, run with NAG's processor wrappers taken off the denoisers (so that
    diffusers' ``isinstance`` checks and ``type(processor)()`` rebuilds see its own classes) and put back after."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        session = _session(self)
        if session is None:
            return getattr(stock_class(self), name)(self, *args, **kwargs)
        with contextlib.ExitStack() as stack:
            for model, state in zip(session.handle.models, session.handle.states, strict=True):
                stack.enter_context(stock_processors([model], state))
            return getattr(session.base_class, name)(self, *args, **kwargs)

    return method


def _call_signature(base: type) -> inspect.Signature:
    """The stock ``__call__`` signature with the ``nag_*`` keywords added (before ``**kwargs``, if any)."""
    stock = inspect.signature(base.__call__)
    ours = inspect.signature(_NAGPipelineMixin.__call__).parameters
    params = [p for p in stock.parameters.values() if p.kind is not p.VAR_KEYWORD]
    taken = {p.name for p in params}
    added = [ours[n].replace(kind=inspect.Parameter.KEYWORD_ONLY) for n in NAG_CALL_ARGUMENTS if n not in taken]
    var_keyword = [p for p in stock.parameters.values() if p.kind is p.VAR_KEYWORD]
    return stock.replace(parameters=[*params, *added, *var_keyword])


class _NAGPipelineMixin:
    """The call wrapper; reaches the stock pipeline methods through ``super()``."""

    def __call__(
        self,
        *args: Any,
        nag_negative_prompt: str | Sequence[str] | None = None,
        nag_negative_prompt_embeds: torch.Tensor | None = None,
        nag_negative_prompt_attention_mask: torch.Tensor | None = None,
        nag_negative_pooled_prompt_embeds: torch.Tensor | None = None,
        nag_scale: float | None = None,
        nag_tau: float | None = None,
        nag_alpha: float | None = None,
        nag_start: float | None = None,
        nag_end: float | None = None,
        nag_window: str | None = None,
        nag_pooled: str | None = None,
        **kwargs: Any,
    ) -> Any:
        given = [name for name, value in locals().items() if name in NAG_CALL_ARGUMENTS and value is not None]
        session = _session(self)
        if session is None:  # built from an applied pipeline's class (type(pipe)(**pipe.components)), never applied
            if given:
                raise ValueError(
                    f"NAG is not applied to this {type(self).__name__} (it was built from an applied pipeline's "
                    f"class), so {given} cannot act: call nag.apply(pipe) first"
                )
            return super().__call__(*args, **kwargs)
        misspelt = sorted(name for name in kwargs if name.startswith("nag_"))
        if misspelt:
            raise TypeError(f"unknown NAG argument(s) {misspelt}; the NAG arguments are {list(NAG_CALL_ARGUMENTS)}")
        if not session.busy.acquire(blocking=False):
            raise RuntimeError(
                f"this {type(self).__name__} is already running a call (from another thread?): one NAG-applied "
                "pipeline runs one call at a time, because the per-call NAG state (like diffusers' scheduler "
                "state) belongs to the pipeline; use one pipeline per thread"
            )
        try:
            return self._nag_call(
                args,
                kwargs,
                nag_negative_prompt,
                nag_negative_prompt_embeds,
                nag_negative_prompt_attention_mask,
                nag_negative_pooled_prompt_embeds,
                scale=nag_scale,
                tau=nag_tau,
                alpha=nag_alpha,
                start=nag_start,
                end=nag_end,
                window=nag_window,
                pooled=nag_pooled,
            )
        finally:
            session.busy.release()

    def _nag_call(
        self,
        args: tuple,
        kwargs: dict,
        nag_negative_prompt: str | Sequence[str] | None,
        nag_negative_prompt_embeds: torch.Tensor | None,
        nag_negative_prompt_attention_mask: torch.Tensor | None,
        nag_negative_pooled_prompt_embeds: torch.Tensor | None,
        **overrides: float | str | None,
    ) -> Any:
        session: Session = self._nag_session
        self.nag_report = None
        config = session.defaults.with_overrides(**overrides)
        config = config.with_overrides(pooled=session.family.pooled_for(config))
        negative = _check_negative(
            nag_negative_prompt,
            nag_negative_prompt_embeds,
            nag_negative_prompt_attention_mask,
            nag_negative_pooled_prompt_embeds,
        )
        family = session.family
        if isinstance(negative, NegativeText):
            check_negative(negative, family, _first_denoiser(self, family), config)
        if negative is None:
            self.nag_report = inactive_report(family.name, config, "no NAG negative given: ran the stock pipeline")
            return super().__call__(*args, **kwargs)
        if not config.active:
            reason = "scale is 1" if config.scale == 1.0 else "alpha is 0"
            self.nag_report = inactive_report(family.name, config, f"{reason}: ran the stock pipeline")
            return super().__call__(*args, **kwargs)
        if isinstance(negative, tuple) and not _can_tokenize(self):
            raise ValueError(
                f"this {type(self).__name__} has no tokenizer, so it cannot encode nag_negative_prompt: give the "
                "negative as nag_negative_prompt_embeds"
            )
        prompt_rows = _check_batch(super().__call__, args, kwargs, negative)
        kwargs = _suspend_callbacks(kwargs, session.handle)
        session.call = session.handle.begin(
            negative,
            config=config,
            prompt_rows=prompt_rows,
            count_steps=functools.partial(_steps_of, self),
            scheduler=getattr(self, "scheduler", None),
        )
        rows = quirks_of(session.base_class).rows
        if rows is not None:
            session.call.branch_rows = functools.partial(rows, self)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            session.call = None
            self.nag_report = report_from_call(family.name, session.handle.finish())

    def _nag_encoded(self, stock: Any, args: tuple, kwargs: dict) -> Any:
        """The stock encode method's answer, after which the call records the prompt's embeddings and encodes the
        NAG negative with the same options."""
        encoded = stock(*args, **kwargs)
        session = _session(self)
        call = session.call if session is not None else None
        if call is None or call.encoding_negative:
            return encoded
        values = _named(session, encoded)
        if call.cond_embeds is None:
            call.cond_embeds = values.get("embeds")
            call.uncond_embeds = values.get("uncond")
        elif call.uncond_embeds is None:
            # a second encode_prompt call encodes the pipeline's own negative (Flux/Qwen true CFG)
            call.uncond_embeds = values.get("embeds")
        if call.negative is None:
            call.encoding_negative = True
            try:
                call.negative = self._nag_encode(stock, args, kwargs)
            finally:
                call.encoding_negative = False
        return encoded

    def _nag_encode(self, encode: Any, args: tuple, kwargs: dict) -> NegativeText:
        """Encode the NAG negative with the same options (device, lengths, clip skip, LoRA scale...) that the
        pipeline just used for the prompt, without CFG and with one image per prompt."""
        session: Session = self._nag_session
        prompts = session.call.negative_prompt
        signature = inspect.signature(encode)
        bound = signature.bind(*args, **kwargs)
        call_args = dict(bound.arguments)
        for name in signature.parameters:
            if name == "prompt":
                call_args[name] = list(prompts)
            elif name == "do_classifier_free_guidance":
                call_args[name] = False
            elif name in _IMAGES_PER_PROMPT:
                call_args[name] = 1
            elif _prompt_specific(name):
                call_args[name] = None
        values = _named(session, encode(**call_args))
        return NegativeText(values["embeds"], values.get("mask"), values.get("pooled"))


def _prompt_specific(name: str) -> bool:
    """encode_prompt arguments that belong to the prompt or the CFG negative, never to the NAG negative: extra
    prompts (prompt_2..prompt_4), precomputed embeddings and masks, anything negative_*."""
    extra_prompt = name.startswith("prompt_") and name.removeprefix("prompt_").isdigit()
    return extra_prompt or name.startswith("negative_") or "_embeds" in name or name.endswith("_mask")


def _named(session: Session, encoded: Any) -> dict[str, Any]:
    """The encode method's answer by name: the pipeline's own names where its quirks give them, else the
    family's."""
    values = encoded if isinstance(encoded, tuple) else (encoded,)
    names = quirks_of(session.base_class).encode_returns or session.family.encode_returns
    return dict(zip(names, values, strict=False))


def _encoding(name: str) -> Any:
    """The applied class's encode method ``name``: the stock one, reached past the mixin, then NAG's records."""

    def encode(self: Any, *args: Any, **kwargs: Any) -> Any:
        stock = getattr(super(_NAGPipelineMixin, self), name)
        return self._nag_encoded(stock, args, kwargs)

    return encode


def _check_negative(
    prompt: str | Sequence[str] | None,
    embeds: torch.Tensor | None,
    mask: torch.Tensor | None,
    pooled: torch.Tensor | None = None,
) -> tuple[str, ...] | NegativeText | None:
    """Which of the NAG negative's arguments were given, checked before any compute: prompt text(s), or embeddings
    (+ mask, + pooled vector; their values are checked by ``check_negative``)."""
    if prompt is not None and embeds is not None:
        raise ValueError("give either nag_negative_prompt or nag_negative_prompt_embeds, not both")
    if mask is not None and embeds is None:
        raise ValueError("nag_negative_prompt_attention_mask needs nag_negative_prompt_embeds")
    if pooled is not None and embeds is None:
        raise ValueError("nag_negative_pooled_prompt_embeds needs nag_negative_prompt_embeds")
    if prompt is not None:
        return check_negative_prompt(prompt)
    if embeds is None:
        return None
    return NegativeText(embeds, mask, pooled)


def _first_denoiser(pipe: Any, family: Family) -> Any:
    return next((getattr(pipe, a) for a in family.denoisers if getattr(pipe, a, None) is not None), None)


def _can_tokenize(pipe: Any) -> bool:
    """Whether the pipeline holds a tokenizer to encode a text negative with (the SDXL refiner has only
    ``tokenizer_2``; pipelines with no tokenizer attribute at all encode in their own way)."""
    tokenizers = [name for name in vars(pipe) if name.startswith("tokenizer")]
    return not tokenizers or any(getattr(pipe, name) is not None for name in tokenizers)


def _suspend_callbacks(kwargs: dict, handle: NAGHandle) -> dict:
    """The call's step callbacks run with NAG suspended: a callback that calls another pipeline over the same
    denoiser gets that pipeline's own (stock, or its own NAG) forwards."""
    changed = dict(kwargs)
    for name in ("callback_on_step_end", "callback"):
        callback = kwargs.get(name)
        if callback is not None and callable(callback):
            changed[name] = _suspending(callback, handle)
    return changed


def _suspending(callback: Any, handle: NAGHandle) -> Any:
    """``callback`` run inside ``handle.suspended()``; diffusers' callback objects (``PipelineCallback``,
    ``MultiPipelineCallbacks``) stay objects of their class, so pipelines still read their ``tensor_inputs``."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if not isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):

        @functools.wraps(callback)
        def suspended(*args: Any, **kwargs: Any) -> Any:
            with handle.suspended():
                return callback(*args, **kwargs)

        return suspended
    proxy = object.__new__(_suspending_class(type(callback)))
    proxy.__dict__.update(callback.__dict__)
    proxy.__dict__["_nag_handle"] = handle
    return proxy


_SUSPENDING_CLASSES: dict[type, type] = {}


def _suspending_class(base: type) -> type:
    cls = _SUSPENDING_CLASSES.get(base)
    if cls is None:

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            with self.__dict__["_nag_handle"].suspended():
                return base.__call__(self, *args, **kwargs)

        cls = _SUSPENDING_CLASSES[base] = type(base.__name__, (base,), {"__call__": __call__})
    return cls


def _check_batch(call: Any, args: tuple, kwargs: dict, negative: tuple[str, ...] | NegativeText) -> int | None:
    """One negative for all prompts, or one per prompt: checked against ``prompt`` before any compute. Returns
    the number of prompt rows (prompts × images per prompt) when the arguments tell it."""
    count = len(negative) if isinstance(negative, tuple) else negative.embeds.shape[0]
    try:
        bound = inspect.signature(call).bind_partial(*args, **kwargs)
    except TypeError:
        return None  # the stock call will report its own argument error
    prompt = bound.arguments.get("prompt")
    prompts = 1 if isinstance(prompt, str) else len(prompt) if isinstance(prompt, (list, tuple)) else None
    embeds = bound.arguments.get("prompt_embeds")
    if prompts is None and isinstance(embeds, (torch.Tensor, list, tuple)):
        prompts = embeds.shape[0] if isinstance(embeds, torch.Tensor) else len(embeds)  # rows already per prompt
    if prompts is not None and count not in (1, prompts):
        raise ValueError(f"got {count} NAG negatives for {prompts} prompt(s): give one, or one per prompt")
    per_prompt = next((bound.arguments[name] for name in _IMAGES_PER_PROMPT if name in bound.arguments), 1)
    return prompts * per_prompt if prompts is not None and isinstance(per_prompt, int) else None
