"""The fused LoRA attention processor computes what peft's layers and diffusers' processor compute, and steps
aside (to the module's own processor) in every state it does not cover."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.utils.peft_utils import scale_lora_layers
from families_helpers import FAMILIES, tiny_pipe
from peft import LoraConfig

from trainer import lora_attention
from trainer.lora_attention import FusedLoraAttnProcessor, install_fused_attention

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _unet_with_lora(family: str, alpha: int = 4, **lora) -> torch.nn.Module:
    unet = copy.deepcopy(tiny_pipe(family).unet)
    unet.requires_grad_(False)
    torch.manual_seed(0)  # peft draws the (non-zero) initial LoRA weights from the global generator
    unet.add_adapter(LoraConfig(r=4, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, **lora))
    return unet.train()


def _inputs(attn: Attention, seed: int):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 9, attn.query_dim, generator=generator, requires_grad=True)
    text = torch.randn(2, 7, attn.cross_attention_dim, generator=generator) if attn.is_cross_attention else None
    return hidden, text


def _run(attn: Attention, processor, hidden, text, **kwargs):
    """The module's output and the gradients of its LoRA weights and its input, through `processor`."""
    attn.zero_grad(set_to_none=True)
    hidden.grad = None
    out = processor(attn, hidden, text, **kwargs)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = [p.grad.clone() for p in attn.parameters() if p.requires_grad]
    return out.detach(), grads, hidden.grad.clone()


def _fused_only(processor: FusedLoraAttnProcessor):
    """`processor` with a fallback that fails the test: proof that the fused path computed the result."""
    fused = copy.copy(processor)
    fused.fallback = lambda *args, **kwargs: pytest.fail("the fused path stepped aside")
    return fused


def _assert_same(fused, plain):
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-4, atol=1e-5 * plain[0].abs().max().item())
    assert len(fused[1]) == len(plain[1]) == 8  # A and B of the four projections
    for got, want in zip(fused[1] + [fused[2]], plain[1] + [plain[2]], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


@pytest.fixture(params=["folded", "unfolded"])
def fold(request, monkeypatch):
    """Both forms: the tiny models' layers fold their LoRA into the weight; wider ones (0 here) do not."""
    if request.param == "unfolded":
        monkeypatch.setattr(lora_attention, "FOLD_MAX_WEIGHT", 0)
    return request.param


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("alpha", [4, 8])  # scale 1 (the default) and 2
def test_every_attention_module_matches_peft_and_diffusers(family, alpha, fold):
    unet = _unet_with_lora(family, alpha)
    modules = [m for m in unet.modules() if isinstance(m, Attention)]
    assert install_fused_attention(unet) == len(modules) > 0
    kinds = set()
    for index, attn in enumerate(modules):
        fused = attn.processor
        assert isinstance(fused, FusedLoraAttnProcessor)
        hidden, text = _inputs(attn, index)
        kinds.add(text is None)
        _assert_same(_run(attn, _fused_only(fused), hidden, text), _run(attn, fused.fallback, hidden, text))
    assert kinds == {True, False}  # self- and cross-attention both taken


def test_whole_unet_forward_and_lora_gradients_match(fold):
    unet = _unet_with_lora("sd15")
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([10, 700])

    def run():
        unet.zero_grad(set_to_none=True)
        out = unet(latents, timesteps, encoder_hidden_states=text).sample
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in unet.parameters() if p.requires_grad]

    plain = run()
    install_fused_attention(unet)
    for attn in (m for m in unet.modules() if isinstance(m, Attention)):
        attn.processor = _fused_only(attn.processor)
    fused = run()
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-5)
    assert len(fused[1]) == 2 * 4 * sum(isinstance(m, Attention) for m in unet.modules())
    for got, want in zip(fused[1], plain[1], strict=True):  # through the whole UNet: rounding adds up
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * want.abs().max().item())


def _first_self_attention(unet) -> Attention:
    return next(m for m in unet.modules() if isinstance(m, Attention) and not m.is_cross_attention)


@pytest.mark.parametrize("state", ["merged", "disabled", "mask", "dropout", "two adapters", "bf16 input",
                                   "own scale"])
def test_states_it_does_not_cover_take_the_modules_own_processor(state):
    unet = _unet_with_lora("sd15", lora_dropout=0.5 if state == "dropout" else 0.0)
    if state == "two adapters":
        unet.add_adapter(LoraConfig(r=2, target_modules=TARGETS, init_lora_weights=False), adapter_name="other")
        unet.set_adapters(["default", "other"])
    attn = _first_self_attention(unet)
    install_fused_attention(unet)
    fused = attn.processor
    calls = []
    fallback = fused.fallback
    fused.fallback = lambda *args, **kwargs: calls.append(state) or fallback(*args, **kwargs)
    hidden, _ = _inputs(attn, 0)
    kwargs = {}
    if state == "merged":
        attn.to_q.merge()
    elif state == "disabled":
        unet.disable_adapters()
    elif state == "mask":
        kwargs["attention_mask"] = torch.zeros(2, 1, 9)
    elif state == "own scale":  # diffusers' processors read `attn.scale` differently; leave it to them
        attn.scale = 0.5
    elif state == "bf16 input":  # bfloat16 frozen weights, float32 LoRA, no autocast: peft casts, we do not
        for layer in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            layer.base_layer.bfloat16()
        hidden = hidden.detach().bfloat16()
    with torch.no_grad():
        fused(attn, hidden, None, **kwargs)
    assert calls == [state]


def test_a_changed_scale_and_changed_base_weights_are_seen(fold):
    unet = _unet_with_lora("sd15")
    attn = _first_self_attention(unet)
    install_fused_attention(unet)
    fused, hidden = attn.processor, _inputs(attn, 3)[0]
    _assert_same(_run(attn, _fused_only(fused), hidden, None), _run(attn, fused.fallback, hidden, None))
    scale_lora_layers(unet, 0.25)  # what a pipeline's `cross_attention_kwargs={"scale": ...}` does
    _assert_same(_run(attn, _fused_only(fused), hidden, None), _run(attn, fused.fallback, hidden, None))
    attn.to_k.scaling["default"] = 3.0  # one scale unlike the others (peft's alpha_pattern)
    _assert_same(_run(attn, _fused_only(fused), hidden, None), _run(attn, fused.fallback, hidden, None))
    with torch.no_grad():
        attn.to_k.base_layer.weight.mul_(3)  # the cached q/k/v weight must follow
    _assert_same(_run(attn, _fused_only(fused), hidden, None), _run(attn, fused.fallback, hidden, None))
    attn.to_v.merge()  # peft writes through `.data`: the cache is dropped while the fallback runs
    with torch.no_grad():
        fused(attn, hidden, None)
    attn.to_v.unmerge()
    with torch.no_grad():
        attn.to_v.base_layer.weight.data.add_(1.0)  # unseen by the version counter, but the cache is gone
    _assert_same(_run(attn, _fused_only(fused), hidden, None), _run(attn, fused.fallback, hidden, None))


def test_under_bf16_autocast_with_bf16_frozen_weights_it_matches_to_bf16_rounding(fold):
    """What `train.mixed_precision = "bf16"` on a CPU runs: frozen weights in bfloat16, LoRA in float32."""
    unet = _unet_with_lora("sd15")
    for param in unet.parameters():
        if not param.requires_grad:
            param.data = param.data.bfloat16()
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))

    def run():
        unet.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = unet(latents.bfloat16(), torch.tensor([10, 700]), encoder_hidden_states=text.bfloat16()).sample
        out.float().square().mean().backward()
        return out.detach().float(), [p.grad.clone() for p in unet.parameters() if p.requires_grad]

    plain = run()
    install_fused_attention(unet)
    for attn in (m for m in unet.modules() if isinstance(m, Attention)):
        attn.processor = _fused_only(attn.processor)
    fused = run()
    scale = plain[0].abs().max().item()
    assert (fused[0] - plain[0]).abs().max().item() < 0.05 * scale  # bfloat16 keeps ~3 significant digits
    cosines = [torch.nn.functional.cosine_similarity(g.flatten(), w.flatten(), dim=0).item()
               for g, w in zip(fused[1], plain[1], strict=True)]
    assert min(cosines) > 0.98 and len(cosines) == 8 * sum(isinstance(m, Attention) for m in unet.modules())
