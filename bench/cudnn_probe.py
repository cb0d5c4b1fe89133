"""Can cuDNN's attention serve hrm-text's packed prefix-LM batches? A probe, kept so that a newer
torch/cuDNN can be re-checked with one command: `python3 bench/cudnn_probe.py` (CUDA only).

cuDNN's fused attention is the fastest dense kernel on Hopper without FlashAttention 3, but our
batches are packed (many samples on one token axis), so it would have to run ragged
(`aten._cudnn_attention_forward` with cumulative sequence lengths, as torch's nested tensors use
it), in the two passes of models/attention.py's varlen backend. The probe prints:
1. which way cuDNN aligns the causal mask when a sequence has fewer queries than keys (the
   response pass needs bottom-right);
2. bench/attention_check.py's correctness check and timing of flex, varlen (FA2) and that cuDNN
   two-pass on a realistic packed batch, a degenerate one, and 2 full-length 4096-token samples;
3. dense causal attention [2, 10, 4096, 128] per sdpa backend and flex: the ceiling a full-row
   batch could reach;
4. whether the cuDNN two-pass traces under torch.compile(fullgraph=True).
Result on torch 2.11 / cuDNN 9.19 (bench/results/cudnn_probe_h200.txt): top-left alignment and
wrong gradients from the ragged backward, so cuDNN is not an attention backend here.
"""

import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_check as check  # noqa: E402

A = check.A  # models/attention.py as attention_check loads it
HEADS, HEAD_DIM, CONTEXT = check.HEADS, check.HEAD_DIM, check.MAX_SEQLEN


def cudnn_varlen(q, k, v, cu_q, cu_k, max_len, causal):
    """models/attention.py's varlen kernel signature over cuDNN's ragged attention."""
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu_q, cu_k, max_len, max_len, True, 0.0, causal, False)[0]


def register_cudnn_backend():
    """Make 'cudnn' a two-pass backend of the loaded attention module (this process only)."""
    A._VARLEN_KERNELS["cudnn"] = cudnn_varlen
    A.BACKENDS = A.BACKENDS + ("cudnn",)
    reason = A._unavailable_reason
    A._unavailable_reason = lambda name, device: None if name == "cudnn" else reason(name, device)


def causal_alignment(device, rnd):
    n_q, n_k = 3000, CONTEXT
    q, k, v = rnd(n_q, HEADS, HEAD_DIM), rnd(n_k, HEADS, HEAD_DIM), rnd(n_k, HEADS, HEAD_DIM)
    cu_q, cu_k = (torch.tensor([0, n], dtype=torch.int32, device=device) for n in (n_q, n_k))
    out = torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu_q, cu_k, n_q, n_k, True, 0.0, True, False)[0]
    qi, ki = torch.arange(n_q, device=device)[:, None], torch.arange(n_k, device=device)[None]
    for name, mask in (("top-left", ki <= qi), ("bottom-right", ki <= qi + n_k - n_q)):
        ref = F.scaled_dot_product_attention(*(x.float().transpose(0, 1) for x in (q, k, v)), attn_mask=mask)
        err = ((out.float() - ref.transpose(0, 1)).norm() / ref.norm()).item()
        print(f"causal alignment {name:12}: relative error {err:.2e}")


def dense_causal_ceiling(device, rnd):
    q, k, v, grad_out = (rnd(2, HEADS, CONTEXT, HEAD_DIM).requires_grad_() for _ in range(4))

    def fwd_bwd(attend):
        return lambda: torch.autograd.grad(attend(), (q, k, v), grad_out)

    kernels = {}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def attend(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        kernels[backend.name.lower()] = attend
    block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, CONTEXT, CONTEXT, device=device)
    compiled_flex = torch.compile(flex_attention)
    kernels["flex"] = lambda: compiled_flex(q, k, v, block_mask=block_mask)
    print(f"\n== dense causal [2, {HEADS}, {CONTEXT}, {HEAD_DIM}] bf16")
    for name, attend in kernels.items():
        try:
            print(f"{name:20} fwd {check.median_ms(attend):7.3f} ms   fwd+bwd {check.median_ms(fwd_bwd(attend)):7.3f} ms")
        except RuntimeError as e:
            print(f"{name:20} failed: {e}")


def compiles_fullgraph(device, rnd, samples):
    cu, prefix = check.make_batch(samples, 2 * CONTEXT, device)
    layout = A.build_layout(cu, prefix, 2 * CONTEXT, CONTEXT, "cudnn", "prefixlm")
    q, k, v = (rnd(2 * CONTEXT, HEADS, HEAD_DIM).requires_grad_() for _ in range(3))
    out = torch.compile(lambda a, b, c: A.packed_attention(a, b, c, layout), fullgraph=True)(q, k, v)
    out.sum().backward()
    diff = (out - A.packed_attention(q, k, v, layout)).abs().max().item()
    print(f"\ncudnn two-pass under torch.compile(fullgraph=True): traced; max |compiled - eager| = {diff}")


def main():
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        return
    device = torch.device("cuda")
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"gpu: {torch.cuda.get_device_name(device)}; torch {torch.__version__}; cudnn {torch.backends.cudnn.version()}")
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, device=device, generator=g).bfloat16()  # noqa: E731
    register_cudnn_backend()
    rng = np.random.default_rng(0)
    realistic = check.EDGE + check.random_samples(rng, 16384 - sum(p + c for p, c in check.EDGE) - 64)
    degenerate = [(0, 50), (7, 0), (1, 1)] + check.random_samples(rng, 4000)
    full = [(int(p), CONTEXT - int(p)) for p in rng.integers(CONTEXT // 8, CONTEXT * 7 // 8, 2)]
    steps = [
        lambda: causal_alignment(device, rnd),
        lambda: check.check_batch("realistic", realistic, 16384, ["flex", "varlen", "cudnn"], device, timing=True),
        lambda: check.check_batch("degenerate", degenerate, 4096, ["flex", "varlen", "cudnn"], device, timing=False),
        lambda: check.check_batch("2 full", full, 2 * CONTEXT, ["flex", "varlen", "cudnn"], device, timing=True),
        lambda: dense_causal_ceiling(device, rnd),
        lambda: compiles_fullgraph(device, rnd, full),
    ]
    for run in steps:  # each part reports on its own; a failure in one does not hide the others
        try:
            run()
        except Exception:
            traceback.print_exc()


if __name__ == "__main__":
    main()
