"""Checkpoint loader and batched generation with a static KV cache (docs/DESIGN.md, "Inference, evaluation and export").

    python simple_inference_engine.py generate --run RUN_DIR --prompt "1 2 + 3 4 =" [--condition direct]
    python simple_inference_engine.py heldout --run RUN_DIR --heldout demo_data/heldout.jsonl

A prompt is `boq + condition token + prompt text + eoq`. Prefill attends the prompt with prefix
semantics (bidirectional); each new token then attends causally. Every module call of the
recurrence has its own cache slot. Decoding is batched over `batch_size` slots: a slot whose
sequence ends (eoa or token limit) is refilled with the next waiting prompt, so the batch stays
full. A prompt that does not fit the context yields an empty generation and is counted.
"""

import argparse
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_io.rows import parse_conditions
from data_io.text_tokenizer import TextTokenizer
from models import attention as attn_lib
from models.layers import CachedContext
from models.model import LanguageModel
from training.logger import METRICS_FILE
from training.run_dir import load_run

PREFILL_BUCKET = 32  # prompts are padded to a multiple of this, bounding recompiles on CUDA


@dataclass
class GenerationStats:
    prompts: int = 0
    overlong_prompts: int = 0
    stopped_at_eoa: int = 0
    hit_token_limit: int = 0


@dataclass
class _Slot:
    request: int  # index into the prompt list
    prompt_len: int
    position: int  # cache position of the next token to feed
    tokens: list = field(default_factory=list)


class SimpleEngine:
    def __init__(self, model: LanguageModel, tokenizer: TextTokenizer, context_len: int, compile: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.context_len = context_len
        self.device = model.lm_head.weight.device
        self.eoa = tokenizer.eoa_id
        self.stats = GenerationStats()
        use_compile = self.device.type == "cuda" if compile is None else compile
        self._forward = torch.compile(model, dynamic=False) if use_compile else model

    @classmethod
    def from_checkpoint(cls, ckpt_path, ckpt_epoch=None, use_ema=True, arch_override=None, device=None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, context_len, _ = load_run(ckpt_path, ckpt_epoch, use_ema=use_ema,
                                                    arch_override=arch_override, device=device)
        return cls(model, tokenizer, context_len)

    # -- prompts --------------------------------------------------------------------------------

    def known_conditions(self) -> list[str]:
        return list(self.tokenizer.conditions)

    def encode_prompt(self, text: str, condition: str) -> list[int]:
        """boq + one token per condition + text + eoq, as data_io.tokenize packs training rows;
        `condition` is one name or a comma list ("cot,synth")."""
        names = parse_conditions(condition, "prompt")
        unknown = [c for c in names if c not in self.tokenizer.conditions]
        if unknown:
            raise ValueError(f"unknown condition {unknown}; this tokenizer knows {self.known_conditions()}")
        return self.tokenizer.instruction_ids(self.tokenizer.encode_batch([text])[0], names)

    # -- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                     batch_size: int = 16, seed: int = 0, stop_ids: Collection[int] = (),
                     response_prefixes: list[list[int]] | None = None,
                     context_len: int | None = None) -> list[list[int]]:
        """Generated ids per prompt (without the eoa that ended it).

        A generated token in `stop_ids` also ends its sequence and is kept (test-time search stops
        at the end of a reasoning step). `response_prefixes[i]`, when given, is the start of prompt
        i's response: fed causally after the prompt as if generated, and not returned.
        `context_len` (default: the run's) sizes the cache: a prompt of context_len tokens or more
        is not run.
        """
        context_len = context_len or self.context_len
        results: list[list[int]] = [[] for _ in prompts]
        prefixes = response_prefixes or [[] for _ in prompts]
        waiting = []
        for i, p in enumerate(prompts):
            self.stats.prompts += 1
            if len(p) + len(prefixes[i]) >= context_len:
                self.stats.overlong_prompts += 1
            else:
                waiting.append(i)
        waiting.reverse()
        # Fewer prompts than batch_size get the next power of two, not their exact count: the
        # compiled decode step is specialised to its batch size, and every benchmark's last batch
        # would otherwise compile one more (dynamo gives up after 8 and runs uncompiled).
        batch_size = min(batch_size, 1 << (max(1, len(waiting)) - 1).bit_length())
        cache = self.model.new_kv_cache(batch_size, context_len)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        slots: list[_Slot | None] = [None] * batch_size
        next_tokens = torch.zeros(batch_size, dtype=torch.long, device=self.device)

        def fill(row: int) -> None:
            while waiting:
                request = waiting.pop()
                prompt, prefix = prompts[request], prefixes[request]
                first = self._prefill(cache, row, prompt, prefix, generator, temperature, context_len)
                slot = _Slot(request, len(prompt), len(prompt) + len(prefix))
                if self._accept(slot, first, max_new_tokens, results, stop_ids, context_len):
                    slots[row] = slot
                    next_tokens[row] = first
                    return
            slots[row] = None

        for row in range(batch_size):
            fill(row)
        while any(slots):
            positions = torch.tensor([s.position if s else 0 for s in slots], device=self.device)[:, None]
            prompt_lens = torch.tensor([s.prompt_len if s else 1 for s in slots], device=self.device)
            mask = attn_lib.generation_mask(positions, prompt_lens, context_len)
            logits = self._forward(next_tokens[:, None], positions, CachedContext(cache, positions, mask))[:, -1]
            chosen = self._pick(logits, generator, temperature).tolist()
            for row, slot in enumerate(slots):
                if slot is None:
                    continue
                slot.position += 1
                if self._accept(slot, chosen[row], max_new_tokens, results, stop_ids, context_len):
                    next_tokens[row] = chosen[row]
                else:
                    fill(row)
        return results

    def _prefill(self, cache, row: int, prompt: list[int], prefix: list[int], generator, temperature,
                 context_len: int) -> int:
        """Run the prompt (bidirectional) and the response prefix (causal) into cache row `row`;
        return the first generated token."""
        fed = prompt + prefix
        width = -(-len(fed) // PREFILL_BUCKET) * PREFILL_BUCKET
        width = min(width, context_len)
        ids = torch.zeros(1, width, dtype=torch.long, device=self.device)
        ids[0, :len(fed)] = torch.tensor(fed, device=self.device)
        positions = torch.arange(width, device=self.device)[None]
        mask = attn_lib.generation_mask(positions, torch.tensor([len(prompt)], device=self.device), context_len)
        rows = torch.tensor([row], device=self.device)
        logits = self.model(ids, positions, CachedContext(cache, positions, mask, rows))[0, len(fed) - 1]
        return int(self._pick(logits[None], generator, temperature)[0])

    def _accept(self, slot: _Slot, token: int, max_new_tokens: int, results, stop_ids, context_len: int) -> bool:
        """Record a generated token; False when the sequence has ended."""
        if token == self.eoa:
            self.stats.stopped_at_eoa += 1
            return False
        slot.tokens.append(token)
        results[slot.request] = slot.tokens
        if token in stop_ids:
            return False
        if len(slot.tokens) >= max_new_tokens or slot.position >= context_len:
            self.stats.hit_token_limit += 1
            return False
        return True

    @staticmethod
    def _pick(logits: torch.Tensor, generator, temperature: float) -> torch.Tensor:
        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    def generate(self, prompts: list[str], condition: str, max_new_tokens: int, temperature: float = 0.0,
                 num_samples: int = 1, batch_size: int = 16, seed: int = 0) -> list[list[str]]:
        """The evaluation protocol: `num_samples` decoded generations per prompt."""
        encoded = [self.encode_prompt(p, condition) for p in prompts]
        repeated = [ids for ids in encoded for _ in range(num_samples)]
        outputs = self.generate_ids(repeated, max_new_tokens, temperature, batch_size, seed)
        texts = [self.tokenizer.decode(ids) for ids in outputs]
        return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def heldout_accuracy(engine: SimpleEngine, rows: list[dict], batch_size: int = 64, max_new_tokens: int = 32) -> float:
    """Exact match of greedy generations against the rows' responses."""
    by_condition: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        conditions = parse_conditions(row.get("condition"), f"held-out row {i}")
        by_condition.setdefault(",".join(conditions), []).append(i)
    correct = 0
    for condition, indices in by_condition.items():
        outs = engine.generate([rows[i]["instruction"] for i in indices], condition, max_new_tokens,
                               batch_size=batch_size)
        correct += sum(out[0].strip() == rows[i]["response"].strip() for out, i in zip(outs, indices))
    return correct / max(1, len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "heldout"):
        p = sub.add_parser(name)
        p.add_argument("--run", required=True, help="run directory written by pretrain.py")
        p.add_argument("--ckpt-epoch", type=int, default=None, help="checkpoint of this epoch (default: latest)")
        p.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA")
        p.add_argument("--max-new-tokens", type=int, default=64)
        p.add_argument("--batch-size", type=int, default=64)
    sub.choices["generate"].add_argument("--prompt", required=True, action="append", help="prompt text (repeatable)")
    sub.choices["generate"].add_argument("--condition", default="direct")
    sub.choices["generate"].add_argument("--temperature", type=float, default=0.0)
    sub.choices["heldout"].add_argument("--heldout", required=True, help="JSONL rows with instruction, response, condition")
    sub.choices["heldout"].add_argument("--report", action="store_true",
                                        help="also print the run's first and last logged loss and what to run next")
    args = parser.parse_args()

    engine = SimpleEngine.from_checkpoint(args.run, args.ckpt_epoch, use_ema=not args.no_ema)
    if args.command == "generate":
        outs = engine.generate(args.prompt, args.condition, args.max_new_tokens, args.temperature,
                               batch_size=args.batch_size)
        for prompt, out in zip(args.prompt, outs):
            print(f"{prompt}\n  -> {out[0]}")
    else:
        rows = [json.loads(line) for line in Path(args.heldout).read_text().splitlines() if line.strip()]
        accuracy = heldout_accuracy(engine, rows, args.batch_size, args.max_new_tokens)
        if args.report:
            print_report(Path(args.run), accuracy, len(rows))
        else:
            print(f"held-out exact accuracy: {accuracy:.1%} ({len(rows)} problems, greedy)")


def print_report(run_dir: Path, accuracy: float, n: int) -> None:
    logged = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    first, last = logged[0], logged[-1]
    print(f"""
== demo summary ==
run directory      {run_dir}
training loss      {first['train/loss']:.3f} (step {first['step']}) -> {last['train/loss']:.3f} (step {last['step']})
held-out accuracy  {accuracy:.1%} exact match on {n} unseen problems (greedy, EMA weights)
next:
  python simple_inference_engine.py generate --run {run_dir} --prompt "add 17 25"
  python -m evaluation.main ckpt_path={run_dir} data_dir=tests/fixtures/eval generation_config.condition=direct
  python -m conversion.convert_to_hf --ckpt_path {run_dir} --out_dir {run_dir}/hf""")


if __name__ == "__main__":
    main()
