"""Fail closed: a guided layer whose processor reaches attention some other way than NAG expects raises an error
naming the layer and the processor; it never returns an unguided or a mixed output silently. Simulated here with
processors that compute what diffusers' do, by other routes."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from diffusers.models.transformers import transformer_flux

import nag_guidance as nag
from tests.integration.cases import BY_ID as CROSS
from tests.integration.helpers import generate
from tests.integration.joint_cases import BY_ID as JOINT

NAG = {"nag_negative_prompt": "blue"}


class ProjectsByHand:
    """Cross-attention that applies the output projection with ``F.linear`` instead of calling ``to_out[0]``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        batch, heads = q.shape[0], attn.heads
        q, k, v = (t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        projection = attn.to_out[0]
        return F.linear(out, projection.weight, projection.bias)


def test_cross_attention_processor_that_skips_to_out_raises_naming_the_layer():
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    pipe.unet.set_attn_processor(ProjectsByHand())
    generate(pipe, case)  # without NAG the custom processors just run
    with pytest.raises(RuntimeError, match=r"unet\.down_blocks\.0\.attentions\.0.*attn2: ProjectsByHand never called"):
        generate(pipe, case, nag=NAG)
    assert not pipe._nag_session.handle.active  # nothing left behind


def test_joint_processor_that_bypasses_the_attention_function_raises_naming_the_layer(monkeypatch):
    case = JOINT["flux"]
    pipe = nag.apply(case.make())
    stock_call = transformer_flux.FluxAttnProcessor.__call__

    def attend_elsewhere(query, key, value, attn_mask=None, *args, **kwargs):
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        return out.transpose(1, 2)

    def routed_elsewhere(self, *args, **kwargs):
        """A diffusers whose processor reaches attention without the module's ``dispatch_attention_fn``."""
        intercepted = transformer_flux.dispatch_attention_fn
        transformer_flux.dispatch_attention_fn = attend_elsewhere
        try:
            return stock_call(self, *args, **kwargs)
        finally:
            transformer_flux.dispatch_attention_fn = intercepted

    monkeypatch.setattr(transformer_flux.FluxAttnProcessor, "__call__", routed_elsewhere)
    generate(pipe, case)  # stock calls are unaffected
    with pytest.raises(RuntimeError, match=r"transformer\.transformer_blocks\.0\.attn: FluxAttnProcessor did not call"):
        generate(pipe, case, nag=NAG)
