"""Model resolution. The bundled-model tests load real weights (about a minute the first time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agentrl.core.models import (
    ModelNotFoundError,
    bundled_path,
    convert_bundled_gguf,
    inspect_model,
    load_encoder,
    load_gguf,
    load_model,
    resolve_encoder_path,
    resolve_model_path,
)
from tests.conftest import requires_minilm, requires_smollm2


def test_unknown_bundled_name_lists_choices() -> None:
    with pytest.raises(ModelNotFoundError, match="bundled:smollm2-135m-instruct"):
        resolve_model_path("bundled:smollm3")
    with pytest.raises(ModelNotFoundError, match="not a bundled causal LM"):
        inspect_model("bundled:all-minilm-l6-v2")
    with pytest.raises(ModelNotFoundError, match="not a bundled encoder"):
        resolve_encoder_path("bundled:smollm2-135m-instruct")


def test_missing_local_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "no-such-model"))
    file = tmp_path / "file.bin"
    file.write_text("x")
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        resolve_model_path(str(file))


def test_hub_id_passes_through() -> None:
    assert resolve_model_path("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"


@requires_smollm2
@pytest.mark.slow
def test_cached_conversion_generates_like_the_gguf() -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    gguf_model, gguf_tokenizer = load_gguf(bundled_path("smollm2-135m-instruct"))
    cached_dir = convert_bundled_gguf()
    assert (cached_dir / "model.safetensors").exists()
    model, tokenizer = load_model("bundled:smollm2-135m-instruct", device="cpu")
    kwargs = {"add_generation_prompt": True, "return_tensors": "pt", "return_dict": True}
    ids = tokenizer.apply_chat_template(messages, **kwargs)
    gguf_ids = gguf_tokenizer.apply_chat_template(messages, **kwargs)
    assert torch.equal(ids["input_ids"], gguf_ids["input_ids"])
    kwargs = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        out_cached = model.generate(**ids, **kwargs)
        out_gguf = gguf_model.generate(**gguf_ids, **kwargs)
    assert out_cached.tolist() == out_gguf.tolist()
    assert out_cached.shape[1] > ids["input_ids"].shape[1]


@requires_minilm
def test_bundled_minilm_ranks_paraphrase_above_unrelated() -> None:
    encoder = load_encoder("bundled:all-minilm-l6-v2", device="cpu")
    anchor, paraphrase, unrelated = encoder.encode(
        [
            "The cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Quarterly revenue rose by eight percent.",
        ],
        normalize_embeddings=True,
        convert_to_tensor=True,
    )
    assert float(anchor @ paraphrase) > float(anchor @ unrelated) + 0.2
    assert anchor.shape == (384,)


def test_adapter_loads_onto_the_base_given_when_its_own_is_gone(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": "/gone/base"}))
    with pytest.raises(ModelNotFoundError, match=r"'/gone/base' \(named by .*adapter_config.json\) does not"):
        inspect_model(str(adapter))
    source = inspect_model(str(adapter), base=str(tiny_model_dir))
    assert source.kind == "adapter" and source.base == str(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = lora(ids).logits
        model, _ = load_model(str(adapter), device="cpu", base=str(tiny_model_dir))
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)
        config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(tiny_model_dir)}))
        model, _ = load_model(str(adapter), device="cpu")
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)
