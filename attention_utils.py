"""Which attention kernel a run uses, and torch's own varlen flash attention registered with transformers.

Packed rows hold several documents that must not attend to each other. sdpa and eager keep them apart with a
block-diagonal mask that transformers builds from the restarting position_ids; with an explicit mask PyTorch's
SDPA cannot use its flash kernel, so on a GPU it is slower and holds more memory than it needs to. torch 2.13
ships `torch.nn.attention.varlen.varlen_attn`: flash attention over documents laid end to end in one row, their
boundaries given as cu_seq_lens, with no padding and no mask. transformers does not use it yet; registered
here under the name `torch_varlen` (through its AttentionInterface, and its mask interface so that no 4D mask
is built), it is the default on a CUDA GPU in bf16/fp16 and takes batches flattened by data_utils'
FlattenedCollator. Without CUDA the same function attends document by document with sdpa (the reference the
tests check it against), so the whole path runs and is tested on a CPU.
"""

import importlib.util

import torch
import torch.nn.functional as F

from arguments import UserError

VARLEN = "torch_varlen"
FLASH_DTYPES = (torch.bfloat16, torch.float16)


def varlen_available():
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def document_spans(cu_seq_lens):
    """[(start, end)] of each document in the flattened row.

    >>> document_spans(torch.tensor([0, 3, 4, 9], dtype=torch.int32))
    [(0, 3), (3, 4), (4, 9)]
    """
    bounds = cu_seq_lens.tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def reference_varlen(query, key, value, cu_seq_lens, scale):
    """Causal attention document by document: query [1, heads, tokens, head_dim], key/value [1, kv_heads,
    tokens, head_dim] (grouped-query attention when kv_heads < heads) -> [tokens, heads, head_dim]."""
    outputs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                              scale=scale, enable_gqa=True)[0].transpose(0, 1)
               for s, e in document_spans(cu_seq_lens)]
    return torch.cat(outputs, dim=0)


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention function contract: query [1, heads, tokens, head_dim], key/value [1, kv_heads,
    tokens, head_dim] of one flattened row; returns ([1, tokens, heads, head_dim], None). Document boundaries
    come as cu_seq_lens_q/k and max_length_q/k (FlattenedCollator), or are read from the restarting
    position_ids."""
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{VARLEN} attention takes a batch flattened into one row without padding (data_utils."
                         "FlattenedCollator), not padded rows")
    if not getattr(module, "is_causal", True):
        raise ValueError(f"{VARLEN} attention is causal only")
    if dropout:
        raise ValueError(f"{VARLEN} attention has no dropout; set the model's attention_dropout to 0")
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    if cu_q is None:
        from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

        (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(kwargs["position_ids"])
    if query.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [tokens, heads, head_dim]
        out = varlen_attn(q, k, v, cu_q.int(), cu_k.int(), int(max_q), int(max_k), scale=scaling,
                          window_size=(-1, 0),  # causal: this tuple, not a list, is what varlen_attn tests for
                          enable_gqa=k.shape[1] != q.shape[1])
    else:
        out = reference_varlen(query, key, value, cu_q, scaling)
    return out.unsqueeze(0), None


def register_varlen_attention():
    """Make `attn_implementation="torch_varlen"` known to transformers (idempotent). Its mask function is
    flash attention's: no mask at all for unpadded input."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, flash_attention_mask)


def head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def training_dtype(model_args, training_args):
    """The dtype attention runs in: autocast's under --bf16/--fp16, else the weights' (--dtype)."""
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else torch.float32


def varlen_fits(config, dtype):
    """Why torch's varlen flash kernel cannot run this model in this dtype, or None if it can (flash attention's
    limits: bf16/fp16, head size a multiple of 8 up to 256)."""
    if not varlen_available():
        return "this torch has no torch.nn.attention.varlen"
    if dtype not in FLASH_DTYPES:
        return f"{str(dtype).removeprefix('torch.')} (flash attention needs bf16 or fp16: add --bf16)"
    size = head_dim(config)
    if size % 8 or size > 256:
        return f"head size {size} (flash attention takes multiples of 8 up to 256)"
    return None


def choose_attention(model_args, training_args, config, cuda=None):
    """(attention implementation, why) for this run. --attn_implementation decides when given; else torch's
    varlen flash attention on a CUDA GPU where it fits, sdpa otherwise."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if model_args.attn_implementation:
        return model_args.attn_implementation, "chosen by --attn_implementation"
    if not cuda:
        return "sdpa", "no CUDA GPU: documents kept apart by the mask built from position_ids"
    misfit = varlen_fits(config, training_dtype(model_args, training_args))
    if misfit:
        return "sdpa", f"varlen flash attention does not fit {misfit}; documents kept apart by a mask"
    return VARLEN, "CUDA GPU: flash attention over document boundaries, no padding and no mask"


def use_attention(model_args, training_args, config):
    """Choose the run's attention (model_args.attn_implementation is set to it, for the model to load with) and
    register torch_varlen with transformers if it is the one. Returns (name, why) for the log."""
    name, why = choose_attention(model_args, training_args, config)
    if name == VARLEN:
        misfit = torch.cuda.is_available() and varlen_fits(config, training_dtype(model_args, training_args))
        if misfit:
            raise UserError(f"--attn_implementation {VARLEN} cannot run {misfit}; use sdpa")
        register_varlen_attention()
    model_args.attn_implementation = name
    return name, why


def flattens_batches(attn_implementation):
    """Whether the kernel takes the batch flattened into one row with cu_seq_lens (varlen and flash-attention
    kernels) rather than padded rows with a mask built from position_ids (sdpa, eager, flex_attention)."""
    return (attn_implementation or "").startswith((VARLEN, "flash", "kernels-community/flash"))
