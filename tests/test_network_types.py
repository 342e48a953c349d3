"""LoHa, LoKr and AdaLoRA: each trains the tiny model of every family, resumes exactly, and writes files whose
deltas, applied the way the loaders apply them, equal the trained peft layers' own.

`loader_delta` is the math of ComfyUI's comfy/weight_adapter (lora.py, loha.py, lokr.py) and A1111's
network_lora/hada/lokr.py, written out here so a wrong key, shape or alpha in the export fails the test.
"""

from __future__ import annotations

import types

import pytest
import torch
from peft.utils import set_peft_model_state_dict
from pool_loras import write_lora
from safetensors.torch import load_file

from trainer.config import NetworkConfig, load_config
from trainer.errors import LoraFileError
from trainer.export import kohya_stem, read_lora_metadata
from trainer.generate.lorafile import read_lora_file
from trainer.loop import train
from trainer.lycoris_export import plain_lora_from_adalora, split_key
from trainer.models.families import family_for_pipeline
from trainer.models.tiny import build_tiny_pipeline, load_tiny_pipeline
from trainer.network import add_lora
from trainer.network_types import ADAPTER

TYPES = ["loha", "lokr", "adalora"]
FAMILIES = {"sd15": "tiny", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}


def _values(data, out, network_type, family, **extra):
    values = {"data.path": str(data), "data.resolution": 64, "train.steps": 4, "network.rank": 4,
              "network.alpha": 2.0, "optim.learning_rate": 2e-2, "export.output_dir": str(out),
              "export.dtype": "float32", "network.type": network_type, "model.base_model": FAMILIES[family],
              "network.train_text_encoder": family == "sd15"}
    return load_config(None, {**values, **extra})


PAIRS = [(t, f) for t in TYPES for f in FAMILIES]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, two_images):
    """full_run(type, family): one 4-step run per pair, trained once per module and shared by the tests."""
    done = {}

    def get(network_type: str, family: str):
        if (network_type, family) not in done:
            folder = tmp_path_factory.mktemp(f"{network_type}-{family}")
            done[network_type, family] = folder, train(_values(two_images, folder / "full", network_type, family))
        return done[network_type, family]

    return get


def loader_delta(tensors: dict[str, torch.Tensor], stem: str, shape) -> torch.Tensor:
    """One layer's weight delta as ComfyUI/A1111 compute it from a kohya/LyCORIS file (strength 1)."""
    t = {k.removeprefix(stem + "."): v.float() for k, v in tensors.items() if k.startswith(stem + ".")}
    alpha = float(t["alpha"])
    if "lora_down.weight" in t:
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        return (up.flatten(1) @ down.flatten(1)).reshape(shape) * alpha / down.shape[0]
    if "hada_w1_a" in t:
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return delta.reshape(shape) * alpha / t["hada_w1_b"].shape[0]
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
    dim = t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else None
    return torch.kron(w1, w2).reshape(shape) * (alpha / dim if dim else 1.0)


def _peft_pipeline(family: str, network: NetworkConfig, peft_file):
    """A fresh tiny pipeline with the run's adapter type attached and its trained tensors loaded."""
    pipe = load_tiny_pipeline(FAMILIES[family])
    base = types.SimpleNamespace(pipe=pipe, family=family_for_pipeline(pipe))
    add_lora(base, network, total_steps=4)
    saved = load_file(str(peft_file))
    for component in {k.split(".", 1)[0] for k in saved}:
        prefix = component + "."
        result = set_peft_model_state_dict(getattr(pipe, component), {k.removeprefix(prefix): v for k, v in
                                                                      saved.items() if k.startswith(prefix)},
                                           adapter_name=ADAPTER)
        assert not getattr(result, "unexpected_keys", None)
    return base


@pytest.mark.parametrize(("network_type", "family"), PAIRS)
def test_each_file_applied_like_the_loaders_equals_the_trained_layers(full_run, network_type, family):
    _, result = full_run(network_type, family)
    kohya_file, peft_file = result.outputs[:2]
    config = _values("x", "y", network_type, family)
    plain = {"type": "lora", "alpha": float(config.network.rank)} if network_type == "adalora" else {}
    network = NetworkConfig(**{**config.network.__dict__, **plain})
    base = _peft_pipeline(family, network, peft_file)  # AdaLoRA's PEFT file is a plain LoRA of scale 1
    kohya = load_file(str(kohya_file))
    checked = 0
    for component in base.family.components:
        for name, module in getattr(base.pipe, component).named_modules():
            if not hasattr(module, "get_delta_weight") or not hasattr(module, "base_layer"):
                continue
            stem = kohya_stem(base, component, name)
            expected = module.get_delta_weight(ADAPTER).float()
            if f"{stem}.alpha" not in kohya:  # only AdaLoRA drops layers, and only ones pruned to rank 0
                assert network_type == "adalora" and expected.abs().max() == 0
                continue
            torch.testing.assert_close(loader_delta(kohya, stem, expected.shape), expected, atol=1e-6, rtol=1e-5)
            checked += 1
    assert checked > 0 and checked == sum(1 for k in kohya if k.endswith(".alpha"))
    meta = read_lora_metadata(kohya_file)
    assert meta["ss_network_module"] == ("networks.lora" if network_type == "adalora" else "lycoris.kohya")
    assert f'"algo": "{network_type}"' in meta["ss_network_args"]
    assert (network_type == "adalora") != ("diffusers cannot load" in meta.get("lora_studio_diffusers_note", ""))
    if network_type != "adalora":  # the pool refuses the kohya file by name and reads the PEFT twin
        kind = "LoHa" if network_type == "loha" else "LoKr"
        with pytest.raises(LoraFileError, match=f"LyCORIS {kind} file in kohya keys.*{peft_file.name}"):
            read_lora_file(kohya_file)
        assert read_lora_file(peft_file).format == f"peft-{network_type}"


@pytest.mark.parametrize(("network_type", "family"), PAIRS)
def test_every_type_resumes_exactly(full_run, two_images, network_type, family):
    folder, full = full_run(network_type, family)
    part = _values(two_images, folder / "part", network_type, family)
    train(part, should_stop=lambda: True)  # stops after step 1 with a checkpoint
    resumed = train(part, resume_from=folder / "part")
    assert resumed.losses == full.losses[1:]
    for a_path, b_path in zip(full.outputs[:2], resumed.outputs[:2], strict=True):
        a, b = load_file(str(a_path)), load_file(str(b_path))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_adalora_kohya_file_loads_in_diffusers_like_its_peft_file(full_run):
    family = "sdxl"
    _, result = full_run("adalora", family)
    images = []
    for path in result.outputs[:2]:
        pipe = load_tiny_pipeline(FAMILIES[family])
        pipe.load_lora_weights(str(path), adapter_name="trained")
        generator = torch.Generator().manual_seed(0)
        images.append(pipe("a circle", num_inference_steps=2, width=64, height=64, generator=generator,
                           output_type="np").images[0])
    torch.testing.assert_close(torch.from_numpy(images[0]), torch.from_numpy(images[1]), atol=1e-5, rtol=0)


def test_adalora_to_plain_lora_is_exact_and_keeps_pruned_ranks_out(tiny_pipe):
    """On a real AdaLoRA layer with some ranks pruned (E = 0): B·diag(E)·A·alpha/r, folded, is the same delta."""
    import copy

    pipe = copy.deepcopy(tiny_pipe)
    base = types.SimpleNamespace(pipe=pipe, family=family_for_pipeline(pipe))
    configs = add_lora(base, NetworkConfig(type="adalora", rank=4, alpha=3.0), total_steps=10)
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    torch.manual_seed(0)
    for param in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER], layer.lora_E[ADAPTER]):
        param.data.normal_()
    layer.lora_E[ADAPTER].data[1] = 0.0
    from peft.utils import get_peft_model_state_dict

    tensors = {f"unet.{k}": v for k, v in get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER).items()}
    plain, plain_configs = plain_lora_from_adalora(tensors, configs)
    name = next(k for k in plain if "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A" in k)
    prefix = name.removesuffix(".lora_A.weight")
    delta = plain[f"{prefix}.lora_B.weight"] @ plain[name]
    torch.testing.assert_close(delta, layer.get_delta_weight(ADAPTER), atol=1e-6, rtol=1e-5)
    assert plain[name][1].abs().max() == 0 and plain_configs["unet"].lora_alpha == plain_configs["unet"].r
    assert split_key(name)[0] == "unet"


def comfy_dora_weight(tensors: dict[str, torch.Tensor], stem: str, weight: torch.Tensor) -> torch.Tensor:
    """ComfyUI's `weight_decompose` (comfy/weight_adapter/base.py, v0.3.77) at strength 1, float32."""
    delta = loader_delta({k: v for k, v in tensors.items() if not k.endswith("dora_scale")}, stem, weight.shape)
    scale = tensors[f"{stem}.dora_scale"].float()
    merged = weight + delta
    if scale.shape[0] == weight.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True).transpose(0, 1)
    return merged * (scale / norm.reshape(weight.shape[0], *[1] * (weight.dim() - 1)))


def test_dora_kohya_file_applies_in_comfyui_as_peft_trained_it_and_says_who_cannot(two_images, tmp_path):
    with pytest.warns(UserWarning, match="ComfyUI and Forge") as caught:
        result = train(_values(two_images, tmp_path / "out", "lora", "sd15", **{"network.use_dora": True,
                                                                                  "train.steps": 2}))
    kohya_file, peft_file = result.outputs[:2]
    assert read_lora_metadata(kohya_file)["lora_studio_diffusers_note"] in [str(w.message) for w in caught]
    config = _values("x", "y", "lora", "sd15", **{"network.use_dora": True})
    base = _peft_pipeline("sd15", config.network, peft_file)
    kohya = load_file(str(kohya_file))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    checked = 0
    for component in base.family.components:
        for name, module in getattr(base.pipe, component).named_modules():
            if ADAPTER not in (getattr(module, "lora_magnitude_vector", None) or {}):
                continue
            weight = module.get_base_layer().weight.float()
            applied = comfy_dora_weight(kohya, kohya_stem(base, component, name), weight)
            inputs = x[:, : weight.shape[1]]
            bias = module.get_base_layer().bias
            expected = module(inputs) - (0 if bias is None else bias)  # peft's own DoRA forward
            torch.testing.assert_close(inputs @ applied.T, expected, atol=1e-5, rtol=1e-4)
            checked += 1
    assert checked == sum(1 for k in kohya if k.endswith(".dora_scale")) > 0
    with pytest.raises(LoraFileError, match="kohya DoRA file"):
        read_lora_file(kohya_file)  # the pool would preview it without dora_scale: it points at the PEFT file
    pipe = build_tiny_pipeline("sd15")
    pipe.load_lora_weights(str(peft_file), adapter_name="trained")
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert "trained" in layer.lora_magnitude_vector  # the PEFT file loads as DoRA in diffusers


POOLED = [("loha", "sd15"), ("lokr", "sdxl")]  # sd15's run trains the text encoder too
QUICK = dict(steps=1, guidance=1.0, width=64, height=64, output_type="latent")


def _merged_like_the_loaders(family: str, kohya_file, strength: float):
    """A fresh pipeline with the kohya/LyCORIS file's deltas added to its weights, as A1111 and ComfyUI do."""
    pipe = load_tiny_pipeline(FAMILIES[family])
    base = types.SimpleNamespace(pipe=pipe, family=family_for_pipeline(pipe))
    kohya = load_file(str(kohya_file))
    with torch.no_grad():
        for component in base.family.components:
            for name, module in getattr(pipe, component).named_modules():
                if isinstance(module, torch.nn.Linear) and f"{kohya_stem(base, component, name)}.alpha" in kohya:
                    stem = kohya_stem(base, component, name)
                    module.weight += strength * loader_delta(kohya, stem, module.weight.shape)
    return pipe


@pytest.mark.parametrize(("network_type", "family"), POOLED)
def test_the_pool_previews_loha_and_lokr_as_the_loaders_apply_them(full_run, network_type, family):
    from trainer.generate import AdapterPool, render

    _, result = full_run(network_type, family)
    kohya_file, peft_file = result.outputs[:2]
    base = render(load_tiny_pipeline(FAMILIES[family]), "a red fox", seed=3, **QUICK)[0].numpy()
    pool = AdapterPool(FAMILIES[family])
    report = pool.load("knit", peft_file)
    assert report.format == f"peft-{network_type}" and report.rank == 4 and report.layers > 0
    assert report.layers == sum(1 for k in load_file(str(kohya_file)) if k.endswith(".alpha"))

    def image(strengths, **options):
        return pool.generate("a red fox", seed=3, strengths=strengths, **QUICK, **options)[0].numpy()

    full, half = image({"knit": 1.0}), image({"knit": 0.5})
    for strength, got in ((1.0, full), (0.5, half)):
        want = render(_merged_like_the_loaders(family, kohya_file, strength), "a red fox", seed=3, **QUICK)
        assert abs(got - want[0].numpy()).max() < 1e-4, strength
    assert abs(full - base).max() > 1e-4 and abs(half - full).max() > 1e-4  # 0 if the file did nothing
    assert abs(image({"knit": 1.0}, fuse=True) - full).max() < 1e-4
    if family == "sd15":  # one thread rounds SDXL's untouched proj_in differently once memory moves
        assert (image({"knit": 0.0}) == base).all() and (image({}) == base).all()
    pool.unload("knit")
    assert pool.loaded() == []


def test_the_library_lists_a_loha_run_by_its_peft_file(full_run, tmp_path):
    from app.studio import Studio

    _, result = full_run("loha", "sd15")
    loras = tmp_path / "home" / "loras"
    loras.mkdir(parents=True)
    for path in result.outputs[:2]:
        (loras / path.name.replace(path.name.split(".")[0], "knit", 1)).write_bytes(path.read_bytes())
    write_lora(build_tiny_pipeline("sd15"), loras / "plain.safetensors", seed=1, fmt="kohya")
    assert Studio(tmp_path / "home").lora_files() == {"knit": loras / "knit.peft.safetensors",
                                                      "plain": loras / "plain.safetensors"}
