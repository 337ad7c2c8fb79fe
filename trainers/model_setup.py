"""Which parameters of a causal LM train: all of them, the top decoder layers only, or LoRA adapters (peft).

`prepare_for_training(model, spec)` returns the module the trainer optimises (the same object, or a peft
`PeftModel` wrapping it) with `requires_grad` set; `decoder_and_head(model)` finds the transformer body and
the output head under any of these wrappers, so the trainer can run the body and compute log-probs from the
final hidden states in chunks without ever materialising the full logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

LORA_ALL_LINEAR = "all-linear"


@dataclass
class TrainableSpec:
    """Mirrors `agentrl.experiment.FinetuneSection`.

    mode: `full` or `lora`.
    train_layers: `all`, `upper_half` or the number of top decoder layers that train (full mode).
    freeze_embeddings: keep the input embeddings (and a tied output head) frozen.
    lora_*: adapter rank, alpha, dropout and target module names (`all-linear` for every linear layer).
    """

    mode: str = "full"
    train_layers: int | str = "all"
    freeze_embeddings: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: [LORA_ALL_LINEAR])

    @classmethod
    def from_section(cls, section: Any) -> TrainableSpec:
        return cls(
            mode=section.mode,
            train_layers=section.train_layers,
            freeze_embeddings=section.freeze_embeddings,
            lora_r=section.lora_r,
            lora_alpha=section.lora_alpha,
            lora_dropout=section.lora_dropout,
            lora_target_modules=list(section.lora_target_modules),
        )


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The list of transformer blocks of a decoder-only model (Llama, Qwen, SmolLM, Mistral, Gemma, ...)."""
    body = unwrap(model).get_decoder()
    layers = getattr(body, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise NotImplementedError(f"{type(body).__name__} has no `layers` list; cannot pick layers to train")
    return layers


def unwrap(model: Any) -> Any:
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_and_head(model: Any) -> tuple[Any, torch.nn.Module]:
    """(transformer body returning `last_hidden_state` after the final norm, output head [V, H])."""
    base = unwrap(model)
    head = base.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise NotImplementedError(f"{type(base).__name__} has no output head with a weight")
    return base.get_decoder(), head


def num_trained_layers(spec: TrainableSpec, total: int) -> int:
    if spec.train_layers == "all":
        return total
    if spec.train_layers == "upper_half":
        return total - total // 2
    n = int(spec.train_layers)
    if not 1 <= n <= total:
        raise ValueError(f"finetune.train_layers={n} but the model has {total} decoder layers")
    return n


def prepare_for_training(model: Any, spec: TrainableSpec) -> Any:
    """Set `requires_grad` for `spec` (wrapping in LoRA adapters for mode `lora`); returns the module to
    train.

    Full mode with `train_layers` below the total freezes the lower layers (and the embeddings with
    `freeze_embeddings`), so autograd never records them: their backward pass is skipped entirely.
    """
    if spec.mode == "lora":
        return _with_lora(model, spec)
    if spec.mode != "full":
        raise ValueError(f"finetune.mode must be 'full' or 'lora', got {spec.mode!r}")
    layers = decoder_layers(model)
    keep = num_trained_layers(spec, len(layers))
    for p in model.parameters():
        p.requires_grad_(True)
    for layer in list(layers)[: len(layers) - keep]:
        for p in layer.parameters():
            p.requires_grad_(False)
    if spec.freeze_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
        head = model.get_output_embeddings()
        if head is not None and head.weight is model.get_input_embeddings().weight:
            head.weight.requires_grad_(False)
    return model


def _with_lora(model: Any, spec: TrainableSpec) -> Any:
    from peft import LoraConfig, get_peft_model

    targets: Any = list(spec.lora_target_modules)
    if targets == [LORA_ALL_LINEAR]:
        targets = LORA_ALL_LINEAR
    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) pairs that train, in a fixed order (the optimizer's and the checkpoint's)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def trainable_snapshot(model: Any) -> dict[str, torch.Tensor]:
    """{name: detached copy} of the trainable parameters (on their device): the policy as it is now, as a
    reference that shares every frozen weight with `model`."""
    return {name: p.detach().clone() for name, p in trainable_parameters(model)}


@contextlib.contextmanager
def trainable_weights_swapped(model: Any, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run `model` with `weights` (a `trainable_snapshot`) in place of its trainable parameters; the
    parameters' own tensors are back on exit. Pointers are swapped, nothing is copied."""
    params = dict(trainable_parameters(model))
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ValueError(f"reference weights lack trainable parameters {missing[:5]}")
    own = {name: p.data for name, p in params.items()}
    try:
        for name, p in params.items():
            p.data = weights[name].to(device=p.device, dtype=p.dtype)
        yield
    finally:
        for name, p in params.items():
            p.data = own[name]


def parameter_counts(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for _, p in trainable_parameters(model))
    return {"params/total": total, "params/trainable": trained}
