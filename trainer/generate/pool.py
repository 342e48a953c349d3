"""AdapterPool: one base pipeline, many named LoRAs; strengths and mixes change without reloading anything.

    pool = AdapterPool("tiny")
    pool.load("ink", "output/ink.safetensors")           # LoadReport: format, rank, layers
    pool.load("odd", "odd.safetensors", allow_partial=True)   # load what fits; report.unmatched lists the rest
    pool.load("film", "film.peft.safetensors")
    pool.load("knit", "knit.peft.safetensors")           # a LoHa/LoKr run's PEFT file (peftfile.py)
    images = pool.generate("a lighthouse", seed=7, strengths={"ink": 0.7, "film": 0.3})
    image = pool.grid(["a lighthouse", "a cat"], strengths=[0, 0.5, 1.0], loras=["ink"])

Without compile, each LoRA is its own peft adapter and a strength change or a switch is `set_adapters`. With
`compile=True` the UNet is compiled once and LoRAs of compatible shape take turns in one hot-swap slot
(see slot.py); a LoRA that cannot be hot-swapped loads as its own adapter and its report says why.
Every key of a file must land on a layer of one of the model family's components (the UNet and its text
encoders): a file with keys that match nothing is refused, naming how many and which, unless the caller
passes allow_partial=True, and then the report lists them.
The pool is shared by the web UI's request threads, so every public method holds one lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.errors import LoraFileError, ModelError, StudioError
from trainer.generate.fusion import Fusion
from trainer.generate.lorafile import LoraPlan, plan_lora, read_lora_file
from trainer.generate.peftfile import inject_peft_adapter, plan_peft_adapter
from trainer.generate.render import render
from trainer.generate.slot import SLOT, HotswapSlot
from trainer.models.families import family_for_pipeline


@dataclass
class LoadReport:
    """What loading one LoRA file did."""

    name: str
    path: str
    format: str
    rank: int
    layers: int
    """Layers the LoRA wraps, over all the family's components (UNet and text encoders)."""
    nbytes: int
    unmatched: list[str] = field(default_factory=list)
    """Keys of the file that match no layer of the base model (only with allow_partial): left out, listed here."""
    hotswap: bool = False
    """True when the LoRA takes turns in the compiled pipeline's hot-swap slot."""
    note: str = ""
    """Why a LoRA could not be hot-swapped, or other things worth saying."""


class AdapterPool:
    """A base pipeline loaded once, with named LoRAs beside it."""

    def __init__(self, base_model="tiny", device: str | None = None, dtype: torch.dtype | None = None,
                 compile: bool = False, *, max_loaded: int | None = None, max_bytes: int | None = None,
                 target_rank: int = 64, compile_backend: str = "inductor"):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or (torch.float16 if self.device.startswith("cuda") else torch.float32)
        self.pipe = load_pipeline(base_model, self.device, self.dtype)
        self.family = family_for_pipeline(self.pipe)
        self.compile = compile
        self.compile_backend = compile_backend
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, LoadReport] = OrderedDict()
        self._lock = threading.RLock()
        self._compiled = False
        self._slot = HotswapSlot(self.pipe, target_rank) if compile else None
        self._active: tuple[str, ...] | None = None
        self.last_swap_s: float | None = None
        """Seconds the last generate() spent switching LoRAs and strengths (no file is read then)."""
        """The adapters set_adapters last made active; None when unknown (after a load, unload or slot use)."""
        self._layer_cache: dict[str, list[torch.nn.Module]] = {}
        self._fusion = Fusion(self.pipe, self.family.components)

    def loaded(self) -> list[str]:
        """Names of the loaded LoRAs, least recently used first."""
        with self._lock:
            return list(self._entries)

    def report(self, name: str) -> LoadReport:
        with self._lock:
            return self._entry(name)

    def load(self, name: str, path: str | Path, allow_partial: bool = False) -> LoadReport:
        """Load a LoRA file as `name` (replacing one of that name); a bad file leaves the pool as it was.

        A file with keys that match no layer is refused (LoraFileError with the count and names) unless
        `allow_partial`, which loads the layers that match and lists the rest in `report.unmatched`."""
        if not name or name == SLOT or not all(ch.isalnum() or ch in "-_" for ch in name):
            raise StudioError(f"LoRA name {name!r} must be letters, digits, '-' or '_' (peft adapter names "
                              "cannot hold dots)", fix="Pick another name.")
        with self._lock:
            lora = read_lora_file(path)
            if lora.format.startswith("peft-"):
                return self._load_peft_adapter(name, path, lora, allow_partial)
            plan = plan_lora(self.pipe, lora, allow_partial=allow_partial)
            report = LoadReport(name=name, path=str(path), format=lora.format, rank=plan.rank,
                                layers=len(plan.modules), nbytes=lora.nbytes, unmatched=list(plan.unmatched))
            self._admit(report)
            reason = self._slot.why_not(plan) if self._slot else ""
            if self._slot and not reason:
                report.hotswap = True
                self._slot.add(name, plan, self._inject)
            else:
                if self._slot:
                    report.note = f"not hot-swappable: {reason}; loaded as its own adapter (using it " \
                                  "recompiles the UNet)"
                self._inject(plan, name)
            self._entries[name] = report
            return report

    def _load_peft_adapter(self, name: str, path, lora, allow_partial: bool) -> LoadReport:
        """A LoHa/LoKr PEFT file: its own peft adapter (never the hot-swap slot, which holds LoRA shapes)."""
        adapter = plan_peft_adapter(self.pipe, lora, allow_partial=allow_partial)
        report = LoadReport(name=name, path=str(path), format=lora.format, rank=adapter.rank,
                            layers=len(adapter.modules), nbytes=lora.nbytes, unmatched=list(adapter.unmatched))
        self._admit(report)
        if self._slot:
            report.note = f"not hot-swappable: a {adapter.kind} adapter; loaded as its own adapter (using it " \
                          "recompiles the UNet)"
        self._fusion.unfuse()
        self._active, self._layer_cache = None, {}
        try:
            with _quiet_loaders():
                inject_peft_adapter(self.pipe, adapter, name)
        except Exception as err:  # peft raises many types; any of them leaves this file unusable
            self._delete_adapter(name)
            if isinstance(err, LoraFileError):
                raise
            raise LoraFileError(f"could not be loaded into the model ({err})", where=str(path),
                                fix="Check that it was made for this base model.") from err
        self._entries[name] = report
        return report

    def _admit(self, report: LoadReport) -> None:
        """Refuse a LoRA over the byte cap; drop the one of its name and evict until it fits."""
        if self.max_bytes is not None and report.nbytes > self.max_bytes:
            raise LoraFileError(f"needs {report.nbytes} bytes, more than the pool's cap of {self.max_bytes}",
                                where=report.path, fix="Raise max_bytes or load a smaller LoRA.")
        if report.name in self._entries:
            self._drop(report.name)
        self._make_room(report.nbytes)

    def unload(self, name: str) -> None:
        with self._lock:
            self._entry(name)
            self._drop(name)

    def generate(self, prompt: str, negative_prompt: str = "", seed: int = 0, steps: int = 20,
                 guidance: float = 7.5, width: int | None = None, height: int | None = None,
                 strengths: dict[str, float] | None = None, num_images: int = 1,
                 output_type: str = "pil", fuse: bool = False) -> list:
        """Images for `prompt` with the named LoRAs at their strengths; LoRAs not named are off.

        `fuse=True` bakes the mix into the base weights (see fusion.py), so repeated previews of one mix run at
        the base model's speed; the next other mix, strength or `fuse=False` call unfuses exactly first."""
        with self._lock:
            started = time.perf_counter()
            self._apply(strengths or {}, fuse)
            self.last_swap_s = time.perf_counter() - started
            self._compile_once()
            return render(self.pipe, prompt, negative_prompt, seed, steps, guidance, width, height,
                          num_images, output_type)

    def set_strengths(self, strengths: dict[str, float]) -> None:
        """Make exactly these LoRAs active at these strengths (0 or absent: off); nothing is reloaded."""
        with self._lock:
            self._fusion.unfuse()  # a scale change under merged weights would unmerge the wrong product
            for name in strengths:
                self._entry(name)
                self._entries.move_to_end(name)
            self._activate([(n, float(w)) for n, w in strengths.items() if float(w) != 0.0])

    def grid(self, prompts: list[str], strengths=(0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0,
             loras: list[str] | None = None, **options):
        """One labelled image: a column per strength, a row per prompt (and per LoRA), one seed throughout."""
        from trainer.generate.grid import check_grid_size, compose_grid

        with self._lock:
            loras = list(loras) if loras is not None else self.loaded()
            if not loras:
                raise StudioError("a grid needs at least one loaded LoRA", fix="Load one with pool.load().")
            strengths = list(strengths)
            check_grid_size(len(loras), len(prompts), len(strengths))
            base: dict[str, object] = {}
            rows, row_labels = [], []
            for lora in loras:
                for prompt in prompts:
                    cells = []
                    for strength in strengths:
                        if float(strength) == 0.0:  # the base image is the same for every LoRA
                            if prompt not in base:
                                base[prompt] = self.generate(prompt, seed=seed, strengths={}, **options)[0]
                            cells.append(base[prompt])
                        else:
                            mix = {lora: strength}
                            cells.append(self.generate(prompt, seed=seed, strengths=mix, **options)[0])
                    rows.append(cells)
                    row_labels.append(f"{lora}: {prompt}" if len(loras) > 1 else prompt)
            return compose_grid(rows, [f"strength {float(s):g}" for s in strengths], row_labels,
                                title=f"seed {seed}")

    @property
    def fused(self) -> tuple | None:
        """The (name, strength) pairs fused into the base weights now, or None."""
        return self._fusion.key

    # internals (called with the lock held)

    def _apply(self, strengths: dict[str, float], fuse: bool) -> None:
        mix = tuple((name, float(w)) for name, w in strengths.items() if float(w) != 0.0)
        if fuse and self._slot is not None:
            raise StudioError("fuse for speed is for an uncompiled pool; a compiled one hot-swaps instead",
                              fix="Generate without fuse, or create the pool with compile=False.")
        if fuse and mix and self._fusion.key == mix:
            for name in strengths:  # already fused: only the checks and the LRU order of set_strengths
                self._entry(name)
                self._entries.move_to_end(name)
            return
        self.set_strengths(strengths)
        if fuse and mix:
            self._fusion.fuse([name for name, _ in mix], mix)

    def _entry(self, name: str) -> LoadReport:
        if name not in self._entries:
            loaded = ", ".join(self._entries) or "none"
            raise StudioError(f"no LoRA named {name!r} is loaded (loaded: {loaded})",
                              fix="Load it first with pool.load(name, path).")
        return self._entries[name]

    def _inject(self, plan: LoraPlan, adapter: str, hotswap: bool = False) -> None:
        """Load the checked state dict with the two calls `load_lora_weights` makes, minus unmatched keys."""
        self._fusion.unfuse()
        alphas = plan.network_alphas
        metadata = None if alphas else plan.adapter_metadata
        if not hotswap:  # a hot-swap copies into existing layers: what is active stays as it was
            self._active, self._layer_cache = None, {}
        try:
            with _quiet_loaders():
                self._inject_parts(plan, adapter, alphas, metadata, hotswap)
        except Exception as err:  # peft/diffusers raise many types; any of them leaves this file unusable
            if not hotswap:
                self._delete_adapter(adapter)
            raise LoraFileError(f"could not be loaded into the model ({err})", where=plan.source or "LoRA",
                                fix="Check that it was made for this base model.") from err

    def _inject_parts(self, plan: LoraPlan, adapter: str, alphas, metadata, hotswap: bool) -> None:
        pipe = self.pipe
        unet_part = plan.component("unet")
        if unet_part:
            pipe.load_lora_into_unet(unet_part, network_alphas=alphas, unet=pipe.unet,
                                     adapter_name=adapter, metadata=metadata, _pipeline=pipe, hotswap=hotswap)
        for component in self.family.text_encoder_names:  # text_encoder, and text_encoder_2 on SDXL
            te_part = plan.component(component)
            if te_part:
                pipe.load_lora_into_text_encoder(te_part, network_alphas=alphas, prefix=component,
                                                 text_encoder=getattr(pipe, component), adapter_name=adapter,
                                                 metadata=metadata, _pipeline=pipe)

    def _delete_adapter(self, adapter: str) -> None:
        present = {a for names in self.pipe.get_list_adapters().values() for a in names}
        self._active, self._layer_cache = None, {}
        if adapter in present:
            with _quiet_loaders():  # peft warns that the deleted adapter was active; the pool sets them anyway
                self.pipe.delete_adapters(adapter)

    def _drop(self, name: str) -> None:
        self._fusion.unfuse()
        if self._entries.pop(name).hotswap:
            self._slot.release(name)
        else:
            self._delete_adapter(name)

    def _make_room(self, incoming: int) -> None:
        """Evict least recently used LoRAs until the new one fits under max_loaded and max_bytes."""
        def over() -> bool:
            count = self.max_loaded is not None and len(self._entries) + 1 > self.max_loaded
            used = sum(r.nbytes for r in self._entries.values())
            return count or (self.max_bytes is not None and used + incoming > self.max_bytes)

        while self._entries and over():
            self._drop(next(iter(self._entries)))

    def _activate(self, chosen: list[tuple[str, float]]) -> None:
        if self._slot is None:
            self._set_adapters([n for n, _ in chosen], [w for _, w in chosen])
            return
        if len(chosen) > 1:
            raise StudioError("mixing several LoRAs is not available on a compiled pool (each mix would "
                              "recompile)", fix="Create the pool with compile=False to mix LoRAs.")
        entry = self._entries[chosen[0][0]] if chosen else None
        if entry is not None and not entry.hotswap:
            self._set_adapters([entry.name], [chosen[0][1]])
        elif entry is not None:
            self._slot.fill(entry.name)
            self._use_slot(chosen[0][1])
        elif self._slot.owner is not None:
            self._use_slot(0.0)  # exact: base + 0 * LoRA, without changing what the graph was built for
        else:
            self._set_adapters([], [])

    def _use_slot(self, weight: float) -> None:
        if self._active == (SLOT,):
            self._slot.set_strength(weight)  # already the only active adapter: no module walk
        else:
            self._slot.activate(weight)
            self._active = (SLOT,)

    def _set_adapters(self, names: list[str], weights: list[float]) -> None:
        if names and tuple(names) == self._active:
            # Only strengths change: peft's set_scale on the adapters' own layers. diffusers' set_adapters
            # walks every module of the UNet and text encoder, which costs more than a denoising step.
            for name, weight in zip(names, weights, strict=True):
                for layer in self._layers(name):
                    layer.set_scale(name, weight)
            return
        if not any(self.pipe.get_list_adapters().values()):
            return
        if not names:
            self.pipe.disable_lora()  # the base layers alone: exactly the base image
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, weights)
        self._active = tuple(names)

    def _layers(self, name: str) -> list[torch.nn.Module]:
        """The LoRA layers of adapter `name` in the family's components (found once, then cached)."""
        if name not in self._layer_cache:
            components = [c for c in (getattr(self.pipe, n, None) for n in self.family.components) if c is not None]
            self._layer_cache[name] = [m for c in components for m in c.modules()
                                       if isinstance(getattr(m, "scaling", None), dict) and name in m.scaling]
        return self._layer_cache[name]

    def _compile_once(self) -> None:
        if self.compile and not self._compiled:
            self.pipe.unet.compile(backend=self.compile_backend)
            self._compiled = True


def load_pipeline(base_model, device: str, dtype: torch.dtype):
    """The base pipeline: an existing one, `tiny`, or a local diffusers folder."""
    if hasattr(base_model, "unet"):
        return base_model
    try:
        from trainer.models import load_base  # the model families' loader, when present
    except ImportError:
        load_base = None
    if load_base is not None:
        from trainer.config import ModelConfig

        pipe = load_base(ModelConfig(base_model=str(base_model))).pipe
    elif str(base_model) == "tiny":
        from trainer.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("sd15")
    elif Path(base_model).is_dir():
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(str(base_model), local_files_only=True,
                                                       safety_checker=None)
    else:
        raise ModelError("is neither 'tiny' nor a diffusers folder", where=str(base_model),
                         fix="Pass --base-model tiny or the folder `lora-studio tiny-model` wrote.")
    pipe.set_progress_bar_config(disable=True)
    if pipe.unet.dtype != dtype:
        pipe.to(dtype=dtype)
    return pipe.to(device)


@contextlib.contextmanager
def _quiet_loaders():
    """Silence diffusers' and peft's key warnings while injecting: the LoadReport says what did not match,
    and diffusers' missing-key check matches adapter names as substrings ("a" in "ak"), so it cries wolf."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        transformers_logging.enable_progress_bar()
