"""The device side of generation: a batch of decode slots over one static KV cache.

Everything a decode step reads or writes lives in tensors allocated once (the cache and the slot
state below), and the step does all its bookkeeping (sampling, eoa and token-limit detection,
recording the token) on the device. So on CUDA it is captured once as a CUDA graph and replayed;
the host only looks at the `active` flags every few steps to refill finished slots. On CPU the
same step runs eagerly.

Decode attention (`decode_attention`): "split" (a Triton kernel splitting each row's filled keys
in equal parts, CUDA), "flex" (a flex BlockMask over the filled key tiles, CUDA) or "dense" (a
boolean mask over the whole cache; CPU). All compute `generation_mask`'s rule.
"""

import itertools

import torch

from inference.sampling import Sampling, choose_tokens
from models import attention as attn_lib
from models.layers import CachedContext, PackedContext
from models.model import LanguageModel


class DecodeBatch:
    """B slots. Slot b holds one sequence: `tokens[b]` is the next token to feed, at cache position
    `positions[b]`; `out[b, :generated[b]]` are the tokens generated so far; `active[b]` is False
    once the sequence has ended (eoa, a token of `stop_ids`, which is kept, `max_new_tokens`, or
    the context is full) or the slot is free."""

    DECODE_ATTENTION = ("split", "flex", "dense")

    def __init__(self, model: LanguageModel, batch_size: int, cache_len: int, context_len: int,
                 max_new_tokens: int, eoa: int, sampling: Sampling, decode_attention: str = "dense", stop_ids=()):
        if decode_attention not in self.DECODE_ATTENTION:
            raise ValueError(f"decode_attention={decode_attention!r}: choose from {self.DECODE_ATTENTION}")
        device = model.lm_head.weight.device
        self.model = model
        self.batch_size, self.cache_len, self.context_len = batch_size, cache_len, context_len
        self.max_new_tokens, self.eoa, self.sampling = max_new_tokens, eoa, sampling
        self.decode_attention = decode_attention
        self.cache = model.new_kv_cache(batch_size, cache_len)
        if any(not 0 <= i < model.vocab_size for i in stop_ids):
            raise ValueError(f"stop_ids {sorted(stop_ids)}: each must be a token id in [0, {model.vocab_size})")
        # a lookup table, not torch.isin: with many ids isin sorts on the GPU and waits for it,
        # which a CUDA graph cannot capture
        self.is_stop = torch.zeros(model.vocab_size, dtype=torch.bool, device=device)
        self.is_stop[list(stop_ids)] = True

        def zeros(*shape, dtype=torch.long):
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.tokens, self.positions = zeros(batch_size), zeros(batch_size)
        self.sequences = zeros(batch_size)  # the sequence's index in the request (sampling noise)
        self.generated = zeros(batch_size)
        self.out = zeros(batch_size, max_new_tokens)
        self.active = zeros(batch_size, dtype=torch.bool)
        self.stopped_at_eoa = zeros(batch_size, dtype=torch.bool)
        self.graph: torch.cuda.CUDAGraph | None = None

    # -- one decode step ----------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> None:
        positions = self.positions[:, None]
        # Every query is past its prompt, so it sees the keys up to itself; a free or finished row
        # (its output unused) reads one key, not the whole cache it had filled.
        last_key = torch.where(self.active, self.positions, 0)
        if self.decode_attention == "split":
            mask = attn_lib.KeyLengths((last_key + 1).int())
        elif self.decode_attention == "flex":
            mask = attn_lib.decode_block_mask(last_key, self.cache_len)
        else:
            mask = attn_lib.generation_mask(last_key[:, None], torch.zeros_like(last_key), self.cache_len)
        logits = self.model(self.tokens[:, None], positions, CachedContext(self.cache, positions, mask))[:, -1]
        chosen = choose_tokens(logits, self.sampling, self.sequences, self.generated)
        self._record(chosen, self.positions + 1, self.active)

    def _record(self, chosen: torch.Tensor, next_positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Append chosen[b] to the rows where `rows` (bool [B]) and end those sequences that stop;
        `next_positions` is where chosen would be fed next."""
        ended = chosen == self.eoa
        keep = rows & self.active & ~ended
        stop = self.is_stop[chosen]
        at = self.generated.clamp(max=self.max_new_tokens - 1)[:, None]
        self.out.scatter_(1, at, torch.where(keep, chosen, self.out.gather(1, at)[:, 0])[:, None])
        self.generated += keep
        self.stopped_at_eoa |= rows & self.active & ended
        still = keep & ~stop & (self.generated < self.max_new_tokens) & (next_positions < self.context_len)
        self.active.copy_(torch.where(rows, still, self.active))
        self.tokens.copy_(torch.where(keep, chosen, self.tokens))
        self.positions.copy_(torch.where(still, next_positions, self.positions))

    @torch.no_grad()
    def run(self, steps: int) -> None:
        for _ in range(steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.step()

    @torch.no_grad()
    def capture(self) -> None:
        """Capture `step` as a CUDA graph. Call while every slot is free: the warm-up steps then
        change nothing but the free rows' cache (which a prefill overwrites before it is read)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compilation, cuBLAS workspaces, lazy initialisation
                self.step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    # -- admission ----------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], prefixes: list[list[int]], rows: list[list[int]],
                sequences: list[list[int]], attn_backend: str, pad_to: int | None = None) -> None:
        """One packed forward over prompts[i] + prefixes[i] (prefix-LM attention, as in training:
        the prompt bidirectional, the response prefix causal, fed as if generated). Prompt i's KV
        is written to cache row rows[i][0] and copied to its other rows; each of its rows then
        gets its first token, sampled as sequence sequences[i][j]. `pad_to`: the packed length
        (compiled code sees a few lengths only); the padding tail belongs to no prompt and
        writes its keys/values at the cache's last position of rows[0][0], which no row reads
        before writing it itself (a prompt with its prefix is shorter than the cache)."""
        device = self.tokens.device
        fed = [p + r for p, r in zip(prompts, prefixes)]
        lengths = [len(f) for f in fed]
        ids, token_positions, cu, layout = pack(fed, [len(p) for p in prompts], attn_backend, device, pad_to,
                                                pad_position=self.cache_len - 1)
        token_rows = torch.tensor([r[0] for r, n in zip(rows, lengths) for _ in range(n)]
                                  + [rows[0][0]] * (len(ids) - sum(lengths)), device=device)
        ctx = PackedContext(layout, self.cache, token_rows, token_positions)
        hidden = self.model.hidden_states(ids[None], token_positions[None], ctx)[0]
        logits = self.model.lm_head(hidden[cu[1:len(prompts) + 1].long() - 1])  # each prompt's last token

        for r in rows:
            if len(r) > 1:
                self.cache.copy_rows(r[0], torch.tensor(r[1:], device=device))
        flat_rows = torch.tensor([row for r in rows for row in r], device=device)
        per_prompt = torch.tensor([len(r) for r in rows], device=device)
        seqs = torch.tensor([s for ss in sequences for s in ss], device=device)
        first = choose_tokens(torch.repeat_interleave(logits, per_prompt, dim=0), self.sampling, seqs,
                              torch.zeros_like(seqs))
        fed_lens = torch.repeat_interleave(torch.tensor(lengths, device=device), per_prompt)

        admitted = torch.zeros_like(self.active).index_fill(0, flat_rows, True)
        for state, value in ((self.positions, fed_lens), (self.sequences, seqs),
                             (self.generated, torch.zeros_like(seqs))):
            state.index_copy_(0, flat_rows, value)
        self.active |= admitted
        self.stopped_at_eoa &= ~admitted
        chosen = self.tokens.index_copy(0, flat_rows, first)
        self._record(chosen, self.positions, admitted)


def pack(sequences: list[list[int]], prefix_lens: list[int], attn_backend: str, device, pad_to: int | None = None,
         pad_position: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, attn_lib.PackedLayout]:
    """`sequences` back to back on one token axis, sequence i's first prefix_lens[i] tokens
    attending bidirectionally and the rest causally (as in training): ids and positions [L],
    cu_seqlens [slots + 1] and the layout. With `pad_to`, a fixed shape for compiled code: L is
    pad_to, the padding tail (ids 0, positions `pad_position`) belongs to no sequence, the slot
    count is the next power of two of len(sequences) (empty slots at the end, as training pads its
    slots), and the length bound is L."""
    lengths = [len(s) for s in sequences]
    total = sum(lengths)
    padded, slots = (max(total, pad_to), 1 << (len(sequences) - 1).bit_length()) if pad_to else (total, len(sequences))
    ids = torch.tensor([t for s in sequences for t in s] + [0] * (padded - total), device=device)
    positions = torch.tensor([i for n in lengths for i in range(n)] + [pad_position] * (padded - total), device=device)
    cu = torch.tensor([0, *itertools.accumulate(lengths)] + [total] * (slots - len(sequences)), dtype=torch.int32,
                      device=device)
    prefix = torch.tensor(prefix_lens + [0] * (slots - len(sequences)), dtype=torch.int32, device=device)
    layout = attn_lib.build_layout(cu, prefix, padded, padded if pad_to else max(lengths), attn_backend)
    return ids, positions, cu, layout
