"""Next-token choice: greedy, or sampling with temperature, top-k, top-p and min-p.

Sampling draws Gumbel noise from a counter-based hash of (seed, sequence, step, token) instead of a
stateful generator: a sequence's tokens depend only on the seed, its own index and its logits, not
on the batch it shares or the slot it sits in, and the draw is a pure function of tensors that a
CUDA graph can replay.
"""

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy. top_k 0, top_p 1 and min_p 0 switch those filters off. Filters
    apply to the temperature-scaled distribution: top-k first, then top-p and min-p on what is left
    (a token is kept if it passes both)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 switches it off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1] (1 switches it off)")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p={self.min_p} must lie in [0, 1) (0 switches it off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply) on int64 tensors holding values < 2^32."""
    x = x & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def unit_interval(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (int64 tensors < 2^32) -> float32 in (0, 1), the ends excluded: the top 23 bits,
    centred in their step. 24 bits would put the largest at 1 - 2^-25, which float32 rounds to 1,
    where the Gumbel noise -log(-log(u)) is infinite and its token wins whatever its logit."""
    return ((bits >> 9).float() + 0.5) / (1 << 23)


def uniform_noise(seed: int, sequences: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniform numbers in (0, 1), [B, vocab] float32, a pure function of (seed, sequences[b],
    steps[b], token)."""
    row = _mix32(_mix32(_mix32(torch.full_like(sequences, seed)) ^ sequences) ^ steps)  # [B]
    tokens = torch.arange(vocab, device=sequences.device, dtype=torch.int64)
    return unit_interval(_mix32(row[:, None] ^ (tokens * 0x9E3779B1 & _MASK32)))


def filtered_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature-scaled fp32 logits [B, V] with the filtered-out tokens at -inf."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1 or sampling.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        drop = torch.zeros_like(logits, dtype=torch.bool)
        if sampling.min_p > 0:
            drop |= probs < sampling.min_p * probs.amax(-1, keepdim=True)
        if sampling.top_p < 1:
            # keep the smallest set of most likely tokens whose mass reaches top_p
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            drop |= torch.zeros_like(drop).scatter(-1, order, mass_before >= sampling.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(logits: torch.Tensor, sampling: Sampling, sequences: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Next token per row of logits [B, V]: argmax when greedy, else a draw from the filtered
    distribution (Gumbel-max: argmax of logits + Gumbel noise samples softmax(logits)) using
    `uniform_noise(seed, sequences, steps)`."""
    if sampling.greedy:
        return logits.argmax(-1)
    u = uniform_noise(sampling.seed, sequences, steps, logits.shape[-1])
    return (filtered_logits(logits, sampling) - torch.log(-torch.log(u))).argmax(-1)
