"""Probe (issue 6, line 2): is cuDNN's fused attention, driven through the cudnn-frontend graph API
with ragged (THD) tensors, faster than flex on our packed prefix-LM batches, and correct?

torch's own ragged cuDNN path was unusable (bench/RESULTS.md §9). This calls cuDNN directly: one
graph per pass, built once and executed per call, as a backend would. Prefix-LM is two passes over
the packed token axis, without gathers: the prefix pass (non-causal; sample i's queries and keys
are its first prefix_lens[i] tokens) and the response pass (queries from the first response token,
keys the whole sample, causal aligned bottom-right). Plain causal is one pass over whole samples.

    python3 bench/cudnn_frontend_probe.py     # needs nvidia-cudnn-frontend (1.14.0 checked)

Prints, per batch and slot count, relative errors against the fp32 sdpa reference
(models/attention.py) and forward / forward+backward milliseconds next to compiled flex.
"""

import datetime
import math
import sys
from pathlib import Path

import cudnn
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.attention_check import kernel_ms, median_ms, random_samples, relative_errors  # noqa: E402
from models import attention as A  # noqa: E402

H, D, CONTEXT = 10, 128, 4096
BF16, F32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT


class RaggedPass:
    """One cuDNN attention pass (forward and backward graphs) over `slots` ragged sequences of the
    packed [L, H, D] tensors: sequence b's queries start at token q_start[b] and number q_len[b], its
    keys start at kv_start[b] and number kv_len[b]."""

    def __init__(self, handle, slots: int, causal: bool, total_len: int):
        self.handle, self.slots, self.causal = handle, slots, causal
        self.fwd = self._graph(backward=False, total_len=total_len)
        self.bwd = self._graph(backward=True, total_len=total_len)

    def _graph(self, backward: bool, total_len: int):
        g = cudnn.pygraph(io_data_type=BF16, intermediate_data_type=F32, compute_data_type=F32, handle=self.handle)
        B, S = self.slots, CONTEXT
        dims, strides = [B, H, S, D], [S * H * D, D, H * D, 1]

        def tensor(name, dtype=BF16, dim=dims, stride=strides):
            return g.tensor(name=name, dim=dim, stride=stride, data_type=dtype)

        t = {name: tensor(name) for name in ("q", "k", "v")}
        for name in ("q_off", "kv_off"):
            t[name] = tensor(name, cudnn.data_type.INT64, [B + 1, 1, 1, 1], [1, 1, 1, 1])
        for name in ("q_len", "kv_len"):
            t[name] = tensor(name, cudnn.data_type.INT32, [B, 1, 1, 1], [1, 1, 1, 1])
        t["q"].set_ragged_offset(t["q_off"])
        t["k"].set_ragged_offset(t["kv_off"])
        t["v"].set_ragged_offset(t["kv_off"])
        mask = dict(use_padding_mask=True, seq_len_q=t["q_len"], seq_len_kv=t["kv_len"],
                    diagonal_alignment=cudnn.diagonal_alignment.BOTTOM_RIGHT,
                    diagonal_band_right_bound=0 if self.causal else None)
        if not backward:
            o, stats = g.sdpa(name="fwd", q=t["q"], k=t["k"], v=t["v"], generate_stats=True,
                              attn_scale=1 / math.sqrt(D), **mask)
            o.set_output(True).set_dim(dims).set_stride(strides).set_ragged_offset(t["q_off"])
            stats.set_output(True).set_data_type(F32).set_dim([B, H, S, 1]).set_stride([H * S, S, 1, 1])
            t["o"], t["stats"] = o, stats
        else:
            t["o"], t["do"] = tensor("o"), tensor("do")
            t["o"].set_ragged_offset(t["q_off"])
            t["do"].set_ragged_offset(t["q_off"])
            t["stats"] = tensor("stats", F32, [B, H, S, 1], [H * S, S, 1, 1])
            dq, dk, dv = g.sdpa_backward(name="bwd", q=t["q"], k=t["k"], v=t["v"], o=t["o"], dO=t["do"],
                                         stats=t["stats"], attn_scale=1 / math.sqrt(D),
                                         max_total_seq_len_q=total_len, max_total_seq_len_kv=total_len, **mask)
            for name, x, off in (("dq", dq, "q_off"), ("dk", dk, "kv_off"), ("dv", dv, "kv_off")):
                x.set_output(True).set_dim(dims).set_stride(strides).set_ragged_offset(t[off])
                t[name] = x
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        workspace = torch.empty(g.get_workspace_size(), device="cuda", dtype=torch.uint8)
        return g, t, workspace

    def bind(self, q_start, q_len, kv_start, kv_len):
        """Per-batch metadata (int tensors [slots] on the GPU)."""
        def offsets(start, length):  # B+1 element offsets: each sequence's start, then the last one's end
            return (torch.cat([start, start[-1:] + length[-1:]]).long() * H * D).view(-1, 1, 1, 1)

        self.meta = {"q_off": offsets(q_start, q_len), "kv_off": offsets(kv_start, kv_len),
                     "q_len": q_len.int().view(-1, 1, 1, 1), "kv_len": kv_len.int().view(-1, 1, 1, 1)}

    def _run(self, graph, values):
        g, t, workspace = graph
        g.execute({t[name]: x for name, x in {**self.meta, **values}.items()}, workspace, handle=self.handle)

    def forward(self, q, k, v):
        o = torch.zeros_like(q)
        stats = torch.empty(self.slots, H, CONTEXT, 1, device=q.device, dtype=torch.float32)
        self._run(self.fwd, {"q": q, "k": k, "v": v, "o": o, "stats": stats})
        return o, stats

    def backward(self, q, k, v, o, stats, grad_o):
        dq, dk, dv = (torch.zeros_like(x) for x in (q, k, v))
        self._run(self.bwd, {"q": q, "k": k, "v": v, "o": o, "do": grad_o, "stats": stats, "dq": dq, "dk": dk, "dv": dv})
        return dq, dk, dv


def probe(name, samples, total_len, slots, handle, attn_type):
    dev = torch.device("cuda")
    n = len(samples)
    lengths = torch.tensor([p + c for p, c in samples] + [0] * (slots - n), device=dev)
    prefix = torch.tensor([p for p, _ in samples] + [0] * (slots - n), device=dev)
    if attn_type == "causal":
        prefix = torch.zeros_like(prefix)
    starts = torch.cumsum(lengths, 0) - lengths
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, grad_out = (torch.randn(total_len, H, D, device=dev, generator=g).bfloat16() for _ in range(4))
    cu = torch.cat([starts, starts[-1:] + lengths[-1:]]).int()
    ref_layout = A.build_layout(cu, prefix.int(), total_len, CONTEXT, "sdpa", attn_type)
    leaves = [x.float().requires_grad_() for x in (q, k, v)]
    ref_out = A.packed_attention(*leaves, ref_layout)
    ref = (ref_out.detach(), *torch.autograd.grad(ref_out, leaves, grad_out.float()))

    passes = []
    if attn_type == "prefixlm":
        pre = RaggedPass(handle, slots, causal=False, total_len=total_len)
        pre.bind(starts, prefix, starts, prefix)
        passes.append(pre)
    resp = RaggedPass(handle, slots, causal=True, total_len=total_len)
    resp.bind(starts + prefix, lengths - prefix, starts, lengths)
    passes.append(resp)
    token = torch.arange(total_len, device=dev)
    seg = torch.searchsorted(cu[1:].long(), token, right=True).clamp(max=slots - 1)
    is_prefix = (token < (starts + prefix)[seg]) & (token < cu[-1])

    def fwd():
        outs = [p.forward(q, k, v) for p in passes]
        out = outs[-1][0] if len(outs) == 1 else torch.where(is_prefix[:, None, None], outs[0][0], outs[1][0])
        return out, outs

    def fwd_bwd():
        out, outs = fwd()
        grads = [p.backward(q, k, v, o, s, grad_out) for p, (o, s) in zip(passes, outs)]
        return out, [sum(g[i] for g in grads) for i in range(3)]

    got = fwd_bwd()
    got = (got[0], *got[1])
    errs = relative_errors(got, ref)
    ok = all(e < 1e-2 for e in errs) and all(torch.isfinite(x).all().item() for x in got)  # NaN fails
    flex_layout = A.build_layout(cu, prefix.int(), total_len, CONTEXT, "flex", attn_type)
    fl = [x.clone().requires_grad_() for x in (q, k, v)]

    def flex_step():
        torch.autograd.grad(A.packed_attention(*fl, flex_layout), fl, grad_out)

    def flex_fwd():
        with torch.no_grad():
            A.packed_attention(*fl, flex_layout)

    print(f"{name:22} {attn_type:8} {slots:5d} " + " ".join(f"{e:8.1e}" for e in errs) + f" {'PASS' if ok else 'FAIL'}"
          f" {median_ms(lambda: fwd()):8.3f} {median_ms(fwd_bwd):9.3f} {kernel_ms(fwd_bwd):9.3f}"
          f" {median_ms(flex_fwd):8.3f} {median_ms(flex_step):9.3f} {kernel_ms(flex_step):9.3f}", flush=True)


def main():
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"gpu: {torch.cuda.get_device_name()}; torch {torch.__version__}; cuDNN {cudnn.backend_version_string()};"
          f" cudnn-frontend {getattr(cudnn, '__version__', '?')}")
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    rng = np.random.default_rng(0)
    full = [(int(p), CONTEXT - int(p)) for p in rng.integers(CONTEXT // 8, CONTEXT * 7 // 8, 2)]
    mix = random_samples(rng, 16384 - 64)
    print(f"{'batch':22} {'attn':8} {'slots':>5} {'err out':>8} {'dq':>8} {'dk':>8} {'dv':>8} ok  "
          f"{'cudnn fwd':>8} {'fwd+bwd':>9} {'kernels':>9} {'flex fwd':>8} {'fwd+bwd':>9} {'kernels':>9}")
    for name, samples, total_len, slot_counts in (("2 full-length", full, 8192, (2, 2048)),
                                                  ("realistic mix", mix, 16384, (len(mix), 4096))):
        for attn_type in ("causal", "prefixlm"):
            for slots in slot_counts:
                try:
                    probe(name, samples, total_len, slots, handle, attn_type)
                except Exception as exc:  # an unsupported graph: report and go on
                    print(f"{name:22} {attn_type:8} {slots:5d} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)


if __name__ == "__main__":
    main()
