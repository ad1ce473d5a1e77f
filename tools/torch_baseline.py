"""A PyTorch baseline for our Llama-style model, timed the way tools/benchmark.py times JAX.

    python tools/torch_baseline.py --json                      # configs/clm_125m.py shapes, CUDA
    python tools/torch_baseline.py --device=cpu --layers=2 --dim=64 --heads=4 --mlp_dim=128 \
        --vocab=256 --seq_len=64 --batch=2 --steps=3 --warmup=1

nanoGPT-style: one file, plain `nn.Module`s, `F.scaled_dot_product_attention(is_causal=True)`
(the flash kernel on GPU), bfloat16 autocast over float32 parameters, fused AdamW on CUDA and
`torch.compile` (on by default on CUDA). The blocks have the shapes, and so the parameters and
FLOPs, of `jaxpretrain.model.Transformer`: pre-RMSNorm, RoPE ("rotate_half", feature i paired
with i + head_dim/2), grouped-query attention (`--kv_heads`), a SwiGLU MLP (gate, up, down), no
biases, a final RMSNorm and tied (`--tie`, the default) or untied output embeddings. Query, key
and value are one fused matmul (as in nanoGPT): the same weights, stacked, the same FLOPs.

Every step trains on one fixed batch of random tokens (as `tools/benchmark.py` does). The first
`--warmup` steps are untimed; the first of them carries `torch.compile`'s compilation and is
reported as `compile_seconds`. Each timed step ends with a device synchronization, so the step
time spread (min / quartiles / max) is real. MFU uses `flops_per_token` computed below with the
exact formula of `jaxpretrain/flops.py`, so both sides divide by one FLOP count. This file
imports no jaxpretrain module: it runs in a torch-only environment.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Dense bfloat16 peak of one H100 SXM / H200 (jaxpretrain/hardware.py; not the 2:4-sparse 1,979).
_HOPPER_PEAK_TFLOPS = 989.0


# --- FLOPs: the formula of jaxpretrain/flops.py, from the shapes alone -------------------------


def matmul_params(args: argparse.Namespace) -> int:
    """Parameters that take part in a matmul per token; the embedding lookup does not, the output
    projection does (tied or not). Same as `jaxpretrain.flops.matmul_params`."""
    d, n, k, h, f = args.dim, args.heads, args.kv_heads, args.head_dim, args.mlp_dim
    attention = 2 * d * n * h + 2 * d * k * h  # query, out; key, value
    mlp = 3 * d * f  # gate, up, down
    return args.layers * (attention + mlp) + d * args.vocab


def train_flops_per_token(args: argparse.Namespace) -> float:
    """Forward + backward FLOPs per trained token, PaLM appendix B: 6 N + 12 L H Dh T.

    The attention term counts the whole T x T score matrix: it is NOT halved for causal masking
    (as in PaLM, MaxText and `jaxpretrain.flops.train_flops_per_token`), although the flash kernel
    skips the masked half; MFU figures are therefore comparable with those.
    """
    attention = 12.0 * args.layers * args.heads * args.head_dim * args.seq_len
    return 6.0 * matmul_params(args) + attention


# --- The model ---------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Normalizes in float32 and returns the input's dtype (jaxpretrain's `rms_norm`)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos and sin, [seq_len, head_dim / 2], for positions 0 .. seq_len - 1."""
    half = head_dim // 2
    inverse_frequency = 1.0 / theta ** (torch.arange(half, dtype=torch.float32) * 2.0 / head_dim)
    angle = torch.arange(seq_len, dtype=torch.float32)[:, None] * inverse_frequency
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, Dh]: rotates feature i with feature i + Dh/2, in float32."""
    half = x.shape[-1] // 2
    x32 = x.float()
    first, second = x32[..., :half], x32[..., half:]
    rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return rotated.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = args.heads, args.kv_heads, args.head_dim
        q_size, kv_size = args.heads * args.head_dim, args.kv_heads * args.head_dim
        self.qkv = nn.Linear(args.dim, q_size + 2 * kv_size, bias=False)
        self.out = nn.Linear(q_size, args.dim, bias=False)
        self.split_sizes = (q_size, kv_size, kv_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.split_sizes, dim=-1)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_heads != self.heads:
            # Query head n reads key/value head n // group, as jaxpretrain (and HF repeat_kv) do.
            group = self.heads // self.kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.gate = nn.Linear(args.dim, args.mlp_dim, bias=False)
        self.up = nn.Linear(args.dim, args.mlp_dim, bias=False)
        self.down = nn.Linear(args.mlp_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.mlp_norm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = Mlp(args)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.embed = nn.Embedding(args.vocab, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.layers))
        self.final_norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab, bias=False)
        if args.tie:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(args.seq_len, args.head_dim, args.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # jaxpretrain's init: normal(0.02); the projections into the residual stream (attention
        # out, MLP down) use 0.02 / sqrt(2 * layers); RMSNorm scales are ones.
        residual_std = args.init_std / math.sqrt(2 * args.layers)
        for name, parameter in self.named_parameters():
            if parameter.dim() < 2:
                continue
            is_residual = name.endswith(("out.weight", "down.weight"))
            nn.init.normal_(parameter, std=residual_std if is_residual else args.init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.final_norm(x))


def loss_fn(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


# --- Command line, training and timing ---------------------------------------------------------


def parse_args(args_list: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Defaults: configs/clm_125m.py.
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv_heads", type=int, default=None, help="default: --heads")
    parser.add_argument("--head_dim", type=int, default=None, help="default: dim // heads")
    parser.add_argument("--mlp_dim", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compile in 1st)")
    parser.add_argument("--tie", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA"
    )
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="default: 989 on H100/H200, else none"
    )
    parser.add_argument("--json", action="store_true", help="print one line of JSON")
    # Numerics and optimizer: jaxpretrain's defaults (jaxpretrain/config.py).
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--grad_clip", type=float, default=1.0, help="global norm; 0 disables")
    parser.add_argument("--rope_theta", type=float, default=10000.0)
    parser.add_argument("--norm_eps", type=float, default=1e-5)
    parser.add_argument("--init_std", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(args_list)

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.compile is None:
        args.compile = args.device == "cuda"
    args.kv_heads = args.kv_heads or args.heads
    args.head_dim = args.head_dim or args.dim // args.heads
    if args.heads % args.kv_heads:
        parser.error(f"--heads={args.heads} is not a multiple of --kv_heads={args.kv_heads}")
    if args.head_dim % 2:
        parser.error(f"--head_dim={args.head_dim} must be even (RoPE pairs halves)")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first warmup step compiles)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda but torch sees no CUDA device")
    return args


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    # Weight decay on the matmul weights only, as jaxpretrain decays its `kernel` leaves: not on
    # the RMSNorm scales nor the embedding (nor, when tied, the output projection it doubles as).
    embedding = model.embed.weight
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not embedding]
    no_decay = [p for p in model.parameters() if p.dim() < 2 or p is embedding]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = {"fused": True} if args.device == "cuda" else {}
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, **fused)


def synthetic_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens, [batch, seq_len + 1], split into inputs and next-token targets."""
    generator = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=generator)
    tokens = tokens.to(args.device)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _quantile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return platform.processor() or platform.machine() or "cpu"


def run(args_list: list[str] | None = None) -> dict[str, Any]:
    """Builds, compiles and times the model per `args_list` (the command line); returns the
    figures that `--json` prints."""
    return train_and_time(parse_args(args_list))


def train_and_time(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    cuda = args.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = Transformer(args).to(args.device)
    optimizer = make_optimizer(model, args)
    parameters = sum(p.numel() for p in model.parameters())  # a tied weight counts once
    compiled_loss = torch.compile(loss_fn) if args.compile else loss_fn
    inputs, targets = synthetic_batch(args)

    def train_step() -> torch.Tensor:
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss = compiled_loss(model, inputs, targets)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses: list[torch.Tensor] = []
    step_seconds: list[float] = []
    for step in range(args.warmup + args.steps):
        synchronize()
        start = time.perf_counter()
        losses.append(train_step())
        synchronize()
        elapsed = time.perf_counter() - start
        if step == 0:
            compile_seconds = elapsed
        if step >= args.warmup:
            step_seconds.append(elapsed)

    losses_float = [loss.item() for loss in losses]
    times = sorted(step_seconds)
    median = statistics.median(times)
    tokens_per_second = args.batch * args.seq_len / median
    flops_per_token = train_flops_per_token(args)
    device_name = _device_name(args.device)
    peak_tflops = args.peak_tflops
    if peak_tflops is None and cuda and any(k in device_name for k in ("H100", "H200")):
        peak_tflops = _HOPPER_PEAK_TFLOPS
    achieved_tflops = tokens_per_second * flops_per_token / 1e12
    return {
        "framework": f"torch {torch.__version__}",
        "device": args.device,
        "device_name": device_name,
        "compile": args.compile,
        "layers": args.layers,
        "dim": args.dim,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "mlp_dim": args.mlp_dim,
        "vocab": args.vocab,
        "tie": args.tie,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "params": parameters,
        "matmul_params": matmul_params(args),
        "flops_per_token": flops_per_token,
        "step_time_median_s": median,
        "step_time_min_s": times[0],
        "step_time_p25_s": _quantile(times, 0.25),
        "step_time_p75_s": _quantile(times, 0.75),
        "step_time_max_s": times[-1],
        "tokens_per_second": tokens_per_second,
        "achieved_tflops": achieved_tflops,
        "peak_tflops": peak_tflops,
        "mfu": achieved_tflops / peak_tflops if peak_tflops else None,
        "compile_seconds": compile_seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "loss_first": losses_float[0],
        "loss_last": losses_float[-1],
    }


def main(args_list: list[str] | None = None) -> None:
    args = parse_args(args_list)
    result = train_and_time(args)
    if args.json:
        print(json.dumps(result))
        return
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
    memory = result["peak_memory_gib"]
    print(
        f"torch {result['device_name']} compile={result['compile']}: "
        f"{result['params'] / 1e6:.1f}M params, step {result['step_time_median_s'] * 1e3:.1f} ms "
        f"(min {result['step_time_min_s'] * 1e3:.1f}, max {result['step_time_max_s'] * 1e3:.1f}), "
        f"{result['tokens_per_second']:,.0f} tokens/s, {result['achieved_tflops']:.1f} TFLOP/s, "
        f"MFU {mfu}, peak memory {f'{memory:.2f} GiB' if memory is not None else 'n/a'}, "
        f"compile {result['compile_seconds']:.1f} s, loss {result['loss_first']:.3f} -> "
        f"{result['loss_last']:.3f}"
    )


if __name__ == "__main__":
    main()
