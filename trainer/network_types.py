"""The peft config of each `network.type`, and AdaLoRA's rank budget schedule.

    config = adapter_config(network, targets, total_steps)   # LoraConfig | LoHaConfig | LoKrConfig | AdaLoraConfig
    budget = RankBudget.for_run(base, lora_configs)         # None unless network.type = "adalora"
    loss = loss + budget.penalty()                          # AdaLoRA's orthogonal regularisation
    budget.update(step)                                     # after optimizer.step(), before zero_grad()

LoHa and LoKr are peft's own layers (`peft.LoHaConfig`/`LoKrConfig`), not the `lycoris-lora` package: they
hold exactly the tensors LyCORIS files carry (`hada_w1_a`…, `lokr_w1`, `lokr_w2_a`…) with LyCORIS' scale
(alpha / rank), so trainer/lycoris_export.py writes files every LyCORIS loader reads with no extra
dependency, and diffusers' `add_adapter`, peft's state-dict helpers and the checkpoint hooks work unchanged.

AdaLoRA's `RankAllocator` lives in peft's `AdaLoraModel`, which diffusers' `add_adapter` builds and drops.
`RankBudget` keeps one allocator per trained component and runs `AdaLoraModel.update_and_allocate`'s three
phases itself, holding the final rank pattern here rather than in the peft config: with it there,
`get_peft_model_state_dict` would slice the tensors and a checkpoint would no longer fit the modules.
Pruned ranks are zeros in `lora_E`, so the checkpointed LoRA tensors plus this object's `state_dict` (which
accelerate saves with the checkpoint) resume the schedule exactly.
"""

from __future__ import annotations

import torch
from peft import AdaLoraConfig, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig
from peft.tuners.adalora.layer import RankAllocator

from trainer.config import NetworkConfig

ADAPTER = "default"


def adapter_config(network: NetworkConfig, targets: list[str] | set[str], total_steps: int) -> PeftConfig:
    """The peft config for `network.type`, wrapping `targets` with `network.rank` and `network.alpha`."""
    targets = sorted(targets) if isinstance(targets, set) else list(targets)
    if network.type == "loha":
        return LoHaConfig(r=network.rank, alpha=network.alpha, module_dropout=network.dropout,
                          target_modules=targets)
    if network.type == "lokr":
        return LoKrConfig(r=network.rank, alpha=network.alpha, module_dropout=network.dropout,
                          target_modules=targets)
    if network.type == "adalora":
        return AdaLoraConfig(init_r=network.rank, target_r=max(1, network.rank // 2), lora_alpha=network.alpha,
                             lora_dropout=network.dropout, target_modules=targets, **budget_phases(total_steps))
    return LoraConfig(r=network.rank, lora_alpha=network.alpha, lora_dropout=network.dropout,
                      init_lora_weights=True, target_modules=targets, use_dora=network.use_dora,
                      use_rslora=network.use_rslora)


def budget_phases(total_steps: int) -> dict[str, int]:
    """AdaLoRA's schedule over `train.steps`: full rank for the first 10%, the budget shrinking (cubically,
    re-allocated every ~2% of the run) until the last 20%, which trains the final ranks."""
    return {"total_step": total_steps, "tinit": total_steps // 10, "tfinal": total_steps // 5,
            "deltaT": max(1, total_steps // 50)}


class RankBudget:
    """AdaLoRA's importance scores and rank allocation for every trained component (see the module doc)."""

    def __init__(self, modules: dict[str, torch.nn.Module], configs: dict[str, AdaLoraConfig]):
        self.modules = modules
        self.configs = configs
        self.allocators = {name: RankAllocator(module, configs[name], ADAPTER) for name, module in modules.items()}
        self.rank_patterns: dict[str, dict] = {}

    @classmethod
    def for_run(cls, base, lora_configs: dict[str, PeftConfig]) -> RankBudget | None:
        if not any(isinstance(c, AdaLoraConfig) for c in lora_configs.values()):
            return None
        return cls({name: getattr(base.pipe, name) for name in lora_configs}, dict(lora_configs))

    def update(self, step: int) -> None:
        """`AdaLoraModel.update_and_allocate` for each component; call once per optimizer step (1-based)."""
        for name, module in self.modules.items():
            config, allocator = self.configs[name], self.allocators[name]
            final = config.total_step - config.tfinal
            if step < final:
                _, pattern = allocator.update_and_allocate(module, step)
                if pattern:
                    self.rank_patterns[name] = pattern
            elif step == final:
                _, self.rank_patterns[name] = allocator.update_and_allocate(module, step, force_mask=True)
                allocator.reset_ipt()
            elif name in self.rank_patterns:
                allocator.mask_using_rank_pattern(module, self.rank_patterns[name])

    def penalty(self) -> torch.Tensor | float:
        """AdaLoRA's orthogonal regularisation of P (lora_A) and Q (lora_B), as `AdaLoraModel.forward` adds it."""
        total, count = 0.0, 0
        for name, module in self.modules.items():
            for key, param in module.named_parameters():
                if ("lora_A" in key or "lora_B" in key) and f".{ADAPTER}" in key:
                    cov = param @ param.T if "lora_A" in key else param.T @ param
                    total = total + torch.norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype))
                    count += 1
            weight = self.configs[name].orth_reg_weight
        return weight * total / max(count, 1)

    def state_dict(self) -> dict:
        return {name: {"ipt": a.ipt, "exp_avg_ipt": a.exp_avg_ipt, "exp_avg_unc": a.exp_avg_unc,
                       "rank_pattern": self.rank_patterns.get(name)} for name, a in self.allocators.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, saved in state.items():
            allocator, device = self.allocators[name], next(self.modules[name].parameters()).device
            allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (
                {k: v.to(device) for k, v in saved[part].items()} for part in ("ipt", "exp_avg_ipt", "exp_avg_unc"))
            if saved["rank_pattern"] is not None:
                self.rank_patterns[name] = saved["rank_pattern"]
