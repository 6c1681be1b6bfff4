"""Tiny randomly initialised Hugging Face models used by the test-suite and benchmarks.

Every entry of :data:`HF` builds its model offline from a small config (hidden 32,
4 attention heads, 2 KV heads where the family has GQA, intermediate 64, vocab 128,
64 positions), seeded, in ``eval()`` mode and with eager attention. Initialisation is
widened to ``initializer_range=0.2`` (about ``1/sqrt(hidden)``) so that activations
and logits are O(1), and parameters that Hugging Face initialises to a constant
(biases, norm scales, layer scales) get a small random jitter so that slicing them
wrongly changes the output.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn
from transformers import (
    BertConfig,
    BertModel,
    ConvNextConfig,
    ConvNextModel,
    DistilBertConfig,
    DistilBertModel,
    FalconConfig,
    FalconForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    ResNetConfig,
    ResNetModel,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)

from .nets import ZooEntry, calibrate_batchnorm

__all__ = ["HF"]

VOCAB = 128
SEQ_LEN = 8
IMAGE = 32
INIT_STD = 0.2

ConfigFactory = Callable[[], PreTrainedConfig]
ModelClass = type[PreTrainedModel]

# Shared sizes for the transformer families that use the standard config names.
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    initializer_range=INIT_STD,
)
_GQA = dict(_COMMON, num_key_value_heads=2)


@torch.no_grad()
def _jitter_constant_params(model: nn.Module, std: float = 0.1) -> None:
    """Add N(0, std) noise to every parameter whose entries are all equal."""
    gen = torch.Generator().manual_seed(2)
    for param in model.parameters():
        if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
            param.add_(torch.randn(param.shape, generator=gen) * std)


def _build(
    model_cls: ModelClass, make_config: ConfigFactory, image_input: bool = False
) -> nn.Module:
    """Seeded construction from a fresh config, jitter, BatchNorm calibration for images, eval mode.

    The config is created per build because the model keeps (and pruning may edit) it.
    """
    config = make_config()
    torch.manual_seed(0)
    model = model_cls(config)
    _jitter_constant_params(model)
    if image_input:
        calibrate_batchnorm(model, (3, IMAGE, IMAGE))
    return model.eval()


def _text_inputs(causal: bool) -> dict[str, Any]:
    """Token ids [2, SEQ_LEN] with a full attention mask (and no KV cache for decoders)."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=gen)
    inputs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    if causal:
        inputs["use_cache"] = False
    return inputs


def _vision_inputs() -> dict[str, Tensor]:
    """Pixel values [2, 3, IMAGE, IMAGE]."""
    gen = torch.Generator().manual_seed(0)
    return dict(pixel_values=torch.randn(2, 3, IMAGE, IMAGE, generator=gen))


def _llm(name: str, model_cls: ModelClass, config: ConfigFactory, note: str) -> ZooEntry:
    return ZooEntry(
        name, partial(_build, model_cls, config), partial(_text_inputs, True), "llm", note
    )


def _encoder(name: str, model_cls: ModelClass, config: ConfigFactory, note: str) -> ZooEntry:
    return ZooEntry(
        name, partial(_build, model_cls, config), partial(_text_inputs, False), "encoder", note
    )


def _vision(name: str, model_cls: ModelClass, config: ConfigFactory, note: str) -> ZooEntry:
    return ZooEntry(name, partial(_build, model_cls, config, True), _vision_inputs, "vision", note)


_ENTRIES = (
    _llm(
        "llama",
        LlamaForCausalLM,
        partial(LlamaConfig, **{**_GQA, "num_hidden_layers": 4}, attn_implementation="eager"),
        "Llama, 4 decoder layers, GQA 4q/2kv, SwiGLU 64: 8 residual branches (attn, mlp), 4 layers",
    ),
    _llm(
        "mistral",
        MistralForCausalLM,
        partial(MistralConfig, **_GQA, attn_implementation="eager"),
        "Mistral, 2 decoder layers, GQA 4q/2kv, SwiGLU 64: 4 residual branches (attn, mlp), 2 layers",
    ),
    _llm(
        "qwen2",
        Qwen2ForCausalLM,
        partial(Qwen2Config, **_GQA, attn_implementation="eager"),
        "Qwen2, 2 decoder layers, GQA 4q/2kv with qkv bias, SwiGLU 64: 4 residual branches, 2 layers",
    ),
    _llm(
        "qwen3",
        Qwen3ForCausalLM,
        partial(Qwen3Config, **_GQA, head_dim=8, attn_implementation="eager"),
        "Qwen3, 2 decoder layers, GQA 4q/2kv with q/k RMSNorm, SwiGLU 64: 4 residual branches, 2 layers",
    ),
    _llm(
        "gemma",
        GemmaForCausalLM,
        partial(GemmaConfig, **_GQA, head_dim=8, attn_implementation="eager"),
        "Gemma, 2 decoder layers, GQA 4q/2kv, GeGLU 64, tied embeddings: 4 residual branches, 2 layers",
    ),
    _llm(
        "gemma2",
        Gemma2ForCausalLM,
        partial(
            Gemma2Config, **_GQA, head_dim=8, query_pre_attn_scalar=8, attn_implementation="eager"
        ),
        "Gemma2, 2 layers (sliding/global), GQA 4q/2kv, sandwich norms, softcaps: 4 residual branches",
    ),
    _llm(
        "phi3",
        Phi3ForCausalLM,
        partial(
            Phi3Config,
            **_GQA,
            original_max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            attn_implementation="eager",
        ),
        "Phi3, 2 decoder layers, fused qkv_proj (4q/2kv) and gate_up_proj: 4 residual branches, 2 layers",
    ),
    _llm(
        "gpt2",
        GPT2LMHeadModel,
        partial(
            GPT2Config,
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=64,
            initializer_range=INIT_STD,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        ),
        "GPT-2, 2 blocks, fused Conv1D c_attn, tied LM head: 4 residual branches (attn, mlp), 2 layers",
    ),
    _llm(
        "opt",
        OPTForCausalLM,
        partial(
            OPTConfig,
            vocab_size=VOCAB,
            hidden_size=32,
            ffn_dim=64,
            word_embed_proj_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            init_std=INIT_STD,
            attn_implementation="eager",
        ),
        "OPT, 2 pre-LN decoder layers, ReLU FFN 64, learned positions: 4 residual branches, 2 layers",
    ),
    _llm(
        "gpt_neox",
        GPTNeoXForCausalLM,
        partial(GPTNeoXConfig, **_COMMON, attn_implementation="eager"),
        "GPT-NeoX, 2 layers with parallel residual (attn and mlp on one residual), fused qkv: 4 branches, 2 layers",
    ),
    _llm(
        "falcon",
        FalconForCausalLM,
        partial(
            FalconConfig,
            vocab_size=VOCAB,
            hidden_size=32,
            ffn_hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            parallel_attn=True,
            new_decoder_architecture=False,
            multi_query=True,
            initializer_range=INIT_STD,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        ),
        "Falcon-7B style, 2 layers, parallel attn+mlp off one LayerNorm, multi-query (4q/1kv) fused qkv",
    ),
    _encoder(
        "bert",
        BertModel,
        partial(BertConfig, **_COMMON, attn_implementation="eager"),
        "BERT, 2 post-LN encoder layers + pooler: 4 residual branches (attn, ffn), 2 layers, 4 heads",
    ),
    _encoder(
        "roberta",
        RobertaModel,
        partial(RobertaConfig, **_COMMON, attn_implementation="eager"),
        "RoBERTa, 2 post-LN encoder layers + pooler: 4 residual branches (attn, ffn), 2 layers, 4 heads",
    ),
    _encoder(
        "distilbert",
        DistilBertModel,
        partial(
            DistilBertConfig,
            vocab_size=VOCAB,
            dim=32,
            hidden_dim=64,
            n_layers=2,
            n_heads=4,
            max_position_embeddings=64,
            initializer_range=INIT_STD,
            attn_implementation="eager",
        ),
        "DistilBERT, 2 post-LN encoder layers: 4 residual branches (attn, ffn), 2 layers, 4 heads",
    ),
    _vision(
        "hf_resnet",
        ResNetModel,
        partial(
            ResNetConfig, embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), layer_type="basic"
        ),
        "HF ResNet, 7x7 stem + 2 stages x 1 basic block (8, 16 ch): 1 residual branch (stage 2 has a conv shortcut)",
    ),
    _vision(
        "hf_convnext",
        ConvNextModel,
        partial(
            ConvNextConfig,
            num_stages=2,
            hidden_sizes=(8, 16),
            depths=(2, 1),
            image_size=IMAGE,
            layer_scale_init_value=1.0,
            initializer_range=INIT_STD,
        ),
        "HF ConvNeXt, 2 stages (2+1 blocks, 8/16 ch, layer scale 1): 3 residual branches, channels",
    ),
    _vision(
        "hf_vit",
        ViTModel,
        partial(
            ViTConfig,
            image_size=IMAGE,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            initializer_range=INIT_STD,
            attn_implementation="eager",
        ),
        "HF ViT 32x32/8, 2 pre-norm layers + pooler: 4 residual branches (attn, mlp), 2 layers, 4 heads",
    ),
)

HF: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}
