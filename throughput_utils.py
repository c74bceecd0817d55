"""Training speed as it happens: tokens/s and model FLOPs utilization (MFU) at every logging step.

Tokens are those actually trained: the documents' tokens, padding excluded, summed over every micro-batch of
the accumulation steps since the last log and over every process. Time is the wall clock between two logs,
less the time spent evaluating and saving. MFU is the model's FLOPs over that time against the devices' dense
peak for the run's dtype:

- matmul weights (every linear layer, the output layer included; not the embedding lookup): 2 FLOPs a weight
  a token forward, 2 for the input gradients, and 2 for the weight gradients of trained weights only, so 6 x
  parameters in full training and about 4 x parameters with LoRA;
- attention, from the real document lengths (a packed row's documents do not attend to each other): QK^T and
  AV cost 2 x L^2 x (heads x head size) FLOPs a layer for a causal document of L tokens (half the square
  counted) forward, twice that backward: 6 x layers x heads x head size x sum of L^2.

Gradient checkpointing's recomputation is not counted: MFU measures useful work.
"""

import time

import torch

# Dense peak TFLOP/s of common training GPUs from their vendors' data sheets: (name as torch reports it, bf16 and
# fp16 tensor cores, plain fp32). Matched in order on the device name, so more specific names come first.
PEAK_TFLOPS = [
    ("H100 PCIe", 756, 51), ("H100 NVL", 835, 60), ("H100", 989, 67), ("H200", 989, 67), ("GH200", 989, 67),
    ("B200", 2250, 80), ("A100", 312, 19.5), ("L40S", 362, 91.6), ("L40", 181, 90.5), ("L4", 121, 30.3),
    ("MI300X", 1307, 163.4), ("MI250X", 383, 47.9),
]


def peak_tflops(device_name, dtype):
    """The dense peak of a device for a dtype, or None if the device is not in the table.

    >>> peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16), peak_tflops("NVIDIA L4", torch.float32)
    (989, 30.3)
    >>> peak_tflops("cpu", torch.bfloat16) is None
    True
    """
    for name, half, single in PEAK_TFLOPS:
        if name in device_name:
            return half if dtype in (torch.bfloat16, torch.float16) else single
    return None


def matmul_parameters(model):
    """(weights of every linear layer, those of them trained). Under ZeRO-3 a weight's own numel is its shard's."""
    total = trained = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            size = getattr(module.weight, "ds_numel", module.weight.numel())
            total += size
            trained += size if module.weight.requires_grad else 0
    return total, trained


def attention_width(config):
    """Layers x heads x head size: the attention FLOPs of a token pair scale with it."""
    config = getattr(config, "text_config", config)
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * config.num_attention_heads * head


def document_stats(batch, pad_token_id):
    """(trained tokens, sum of squared document lengths) of a collated batch, as tensors on its device (no wait
    for the device). A flattened batch gives its documents as cu_seq_lens; padded rows (PackedCollator) hold a
    trailing segment of pad tokens, none of them scored, in rows shorter than the longest.

    >>> from data_utils import PackedCollator
    >>> rows = [{"input_ids": [5, 6, 7], "position_ids": [0, 0, 1]}, {"input_ids": [8], "position_ids": [0]}]
    >>> [int(x) for x in document_stats(PackedCollator(pad_token_id=0)(rows), 0)]  # documents of 1, 2 and 1
    [4, 6]
    """
    if "cu_seq_lens_q" in batch:
        lengths = batch["cu_seq_lens_q"].diff().long()
        return lengths.sum(), (lengths ** 2).sum()
    pos, ids, labels = batch["position_ids"], batch["input_ids"], batch["labels"]
    index = torch.arange(pos.shape[1], device=pos.device).expand_as(pos)
    last_start = torch.where(pos == 0, index, 0).amax(1, keepdim=True)  # where each row's last segment starts
    in_last = index >= last_start
    padding = in_last & (((ids == pad_token_id) & (labels == -100)) | ~in_last).all(1, keepdim=True) & (last_start > 0)
    ends = torch.ones_like(in_last)
    ends[:, :-1] = pos[:, 1:] == 0  # a document (or a row's piece of one) ends before a restart and at row end
    ends &= ~padding
    return (~padding).sum(), ((pos + 1) ** 2 * ends).sum()


class ThroughputMeter:
    """Counts the trained tokens and attention work of each micro-batch (add), and at each log gives tokens/s
    and MFU since the previous log (interval). reduce sums a tensor over processes; clock is a wall clock in
    seconds; peak is the devices' dense FLOP/s each (None: no MFU)."""

    def __init__(self, parameters, trained, width, peak, reduce, world_size=1, device="cpu", clock=time.perf_counter):
        self.flops_per_token, self.flops_per_square = 4 * parameters + 2 * trained, 6 * width
        self.peak, self.reduce, self.world_size, self.clock = peak, reduce, world_size, clock
        self.counts = torch.zeros(2, dtype=torch.float64, device=device)
        self.paused, self.since = 0.0, clock()
        self.total_tokens, self.total_seconds, self.total_flops = 0, 0.0, 0.0

    def add(self, batch, pad_token_id):
        self.counts += torch.stack(document_stats(batch, pad_token_id)).to(self.counts)

    def pause(self, seconds):
        """Time spent not training (evaluating, saving): left out of the next interval."""
        self.paused += seconds

    def interval(self):
        """{tokens_per_second, mfu (where there is a peak)} since the last call, over every process."""
        now = self.clock()
        seconds, self.since, self.paused = now - self.since - self.paused, now, 0.0
        tokens, squares = self.reduce(self.counts.clone()).tolist()
        self.counts.zero_()
        flops = tokens * self.flops_per_token + squares * self.flops_per_square
        self.total_tokens, self.total_seconds, self.total_flops = (self.total_tokens + tokens,
                                                                   self.total_seconds + seconds, self.total_flops + flops)
        return self.figures(tokens, seconds, flops)

    def totals(self):
        """{train_tokens, train_tokens_per_second, train_mfu} of the whole run (up to the last interval)."""
        return {"train_tokens": int(self.total_tokens), **{"train_" + k: v for k, v in self.figures(
            self.total_tokens, self.total_seconds, self.total_flops).items()}}

    def figures(self, tokens, seconds, flops):
        if seconds <= 0:
            return {}
        out = {"tokens_per_second": round(tokens / seconds, 2)}
        if self.peak:
            out["mfu"] = round(flops / seconds / (self.peak * self.world_size), 4)
        return out
