"""Batched generation over a training run (docs/DESIGN.md, "Inference, evaluation and export").

    python simple_inference_engine.py generate --run RUN_DIR --prompt "add 17 25" [--condition direct]
    python simple_inference_engine.py heldout --run RUN_DIR --heldout demo_data/heldout.jsonl

A prompt is `boq + condition token + prompt text + eoq`. Prompts are prefilled many at a time in
one packed forward with the training's prefix-LM attention (the prompt attends bidirectionally),
each prompt's keys/values written to its cache slot; `num_samples` copies of a prompt share one
prefill (its KV is copied). Each new token then attends causally. Decoding runs over `batch_size`
slots (inference/decode.py; a CUDA graph on CUDA); every few steps the host refills the slots whose
sequences ended (eoa or token limit) with waiting prompts, one bounded prefill chunk at a time, so
the batch stays full. The KV cache is not the whole context: it holds the longest prompt plus
max_new_tokens, rounded up to a power of two (at least MIN_CACHE_LEN, at most the context; few
distinct compiled shapes). A prompt that does not fit the context yields an empty generation and
is counted.
"""

import argparse
import json
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from data_io import DataError
from data_io.rows import SOURCE_SUFFIXES, parse_conditions, read_rows
from data_io.text_tokenizer import TextTokenizer
from inference.decode import DecodeBatch, pack
from inference.sampling import Sampling
from models import attention as attn_lib
from models.config import round_up
from models.layers import PackedContext
from models.model import LanguageModel
from training.logger import METRICS_FILE
from training.checkpoint import CheckpointError
from training.distributed import set_cpu_threads
from training.parallel import compile_units
from training.run_dir import RunDirError, load_run

MIN_CACHE_LEN = 256  # KV cache lengths are powers of two from here: few distinct compiled shapes
# The packed lengths a padded prefill runs at (a longer chunk: a multiple of the last): each is one
# compiled shape; a chunk pads up to the next (a short refill to 1024, a long chunk at most 4x).
PREFILL_BUCKETS = (1024, 4096, 16384)
# Compiled graphs of the shared Stack code: one per (batch size, cache length) for decoding and per
# (prefill length, batch size, cache length) for prefilling, over a session of many benchmarks.
# Beyond dynamo's default limit (8) later shapes would run eagerly, silently.
RECOMPILE_LIMIT = 64
# Memory kept free beside the KV cache when batch_size="auto" or when a batch is shrunk to fit:
# prefill activations and logits of one chunk, the allocator's slack.
RESERVED_BYTES = 6 << 30


@dataclass
class GenerationStats:
    prompts: int = 0
    overlong_prompts: int = 0
    stopped_at_eoa: int = 0
    hit_token_limit: int = 0
    prefill_tokens: int = 0
    prefill_chunks: int = 0
    decode_steps: int = 0


class SimpleEngine:
    """Generation over a LanguageModel. On CUDA the model's stacks are compiled (in place, the units
    training compiles: one graph per shape serves every module call), the decode step is replayed
    as a CUDA graph, decode attention reads each row's filled keys only, and prompts are prefilled
    through the training's flex prefix-LM attention, packed to one of PREFILL_BUCKETS lengths; on
    CPU all of it runs eagerly. `steps_per_check`: decode steps between two looks of the host at
    which sequences ended; `prefill_tokens`: prompt tokens per packed prefill chunk (at least one
    prompt); `decode_attention`: see inference/decode.py (default: the fastest available)."""

    checkpoint: Path | None = None  # the checkpoint folder from_checkpoint loaded

    def __init__(self, model: LanguageModel, tokenizer: TextTokenizer, context_len: int, compile: bool | None = None,
                 cuda_graphs: bool | None = None, steps_per_check: int = 8, prefill_tokens: int | None = None,
                 prefill_backend: str | None = None, decode_attention: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.context_len = context_len
        self.device = model.lm_head.weight.device
        self.eoa = tokenizer.eoa_id
        self.stats = GenerationStats()
        on_cuda = self.device.type == "cuda"
        if cuda_graphs and not on_cuda:
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, it is on {self.device}")
        self.compiled = on_cuda if compile is None else compile
        if self.compiled:
            compile_units(model, activation_memory_budget=None)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        available = attn_lib.available_backends(self.device)
        dtype = model.lm_head.weight.dtype
        if decode_attention is None:  # the fastest measured (bench/README.md); split is opt-in until measured
            decode_attention = "flex" if "flex" in available else "dense"
        split_unavailable = attn_lib.split_decode_unavailable(self.device, model.arch.head_dim)
        if decode_attention == "split" and split_unavailable:
            raise ValueError(f"decode_attention='split' is unavailable: {split_unavailable}; use 'flex' or 'dense'")
        self.decode_attention = decode_attention
        # fastest first (docs/DESIGN.md, "Decisions"); the two-pass kernels run in half precision only
        half = dtype in (torch.float16, torch.bfloat16)
        self.prefill_backend = prefill_backend or next(b for b in ("flex", "fa3", "varlen", "sdpa")
                                                       if b in available and (half or b in ("flex", "sdpa")))
        # compiled stacks, and flex (compiled on its own), take a packed length as a static shape
        self.pad_prefill = self.compiled or self.prefill_backend.startswith("flex")
        self.steps_per_check = steps_per_check
        self.prefill_tokens = prefill_tokens or (PREFILL_BUCKETS[-1] if on_cuda else 2048)

    @classmethod
    def from_checkpoint(cls, ckpt_path, ckpt_epoch=None, use_ema=True, arch_override=None, device=None,
                        dtype: torch.dtype | None = None):
        """The run's weights in `dtype`: by default bfloat16 on CUDA (the training's forward
        precision; half the bytes a decode step moves) and float32 on CPU."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer, context_len, checkpoint = load_run(ckpt_path, ckpt_epoch, use_ema=use_ema,
                                                             arch_override=arch_override, device=device)
        model.to(dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32))
        engine = cls(model, tokenizer, context_len)
        engine.checkpoint = checkpoint
        return engine

    # -- prompts --------------------------------------------------------------------------------

    def known_conditions(self) -> list[str]:
        return list(self.tokenizer.conditions)

    def condition_names(self, condition: str, where: str = "prompt") -> list[str]:
        """The names of `condition` (one name or a comma list, "cot,synth"); a name this run's
        tokenizer has no token for raises DataError naming `where`."""
        names = parse_conditions(condition, where)
        unknown = [c for c in names if c not in self.tokenizer.conditions]
        if unknown:
            raise DataError(f"{where}: unknown condition {unknown}; this run's tokenizer knows {self.known_conditions()}")
        return names

    def encode_prompt(self, text: str, condition: str) -> list[int]:
        """boq + one token per condition + text + eoq, as data_io.tokenize packs training rows."""
        return self.tokenizer.instruction_ids(self.tokenizer.encode_batch([text])[0], self.condition_names(condition))

    # -- scoring --------------------------------------------------------------------------------

    @torch.no_grad()
    def packed_logits(self, sequences: list[list[int]], prefix_lens: list[int]) -> torch.Tensor:
        """Logits [total tokens, V] of one packed forward over `sequences`, sequence i's first
        prefix_lens[i] tokens attending bidirectionally and the rest causally (as in training),
        padded like a prefill."""
        total = sum(len(s) for s in sequences)
        ids, positions, _, layout = pack(sequences, prefix_lens, self.prefill_backend, self.device,
                                         self.prefill_length(total))
        return self.model(ids[None], positions[None], PackedContext(layout))[0, :total]

    def prefill_length(self, tokens: int) -> int | None:
        """The packed length a forward over `tokens` tokens runs at: a PREFILL_BUCKETS shape when
        compiled stacks or flex (compiled on its own) would otherwise recompile per length."""
        return prefill_bucket(tokens) if self.pad_prefill else None

    # -- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                     batch_size: int | str = 16, seed: int = 0, stop_ids: Collection[int] = (),
                     response_prefixes: list[list[int]] | None = None, context_len: int | None = None, *,
                     num_samples: int = 1, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                     progress: bool = True) -> list[list[int]]:
        """Generated ids (without the eoa that ended them) of `num_samples` sequences per prompt,
        prompt-major: result[i * num_samples + j] is sample j of prompts[i]. batch_size: sequences
        decoded at once, or "auto" (as many as the free GPU memory holds). Sampling (see
        inference/sampling.py) is reproducible: a sequence's tokens depend on the seed and its
        index, not on the batch.

        A generated token in `stop_ids` also ends its sequence and is kept (test-time search stops
        at the end of a reasoning step). `response_prefixes[i]`, when given, is the start of prompt
        i's response: fed causally after the prompt as if generated, and not returned.
        `context_len` (default: the run's) bounds prompt + response: a prompt (with its prefix) of
        context_len tokens or more is not run.
        """
        context_len = context_len or self.context_len
        prefixes = response_prefixes or [[] for _ in prompts]
        if max_new_tokens < 1 or num_samples < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} and num_samples={num_samples} must be >= 1")
        sampling = Sampling(temperature, top_k, top_p, min_p, seed)
        results: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
        waiting = deque()  # [prompt index, samples not admitted yet]
        for i, p in enumerate(prompts):
            self.stats.prompts += 1
            if not p:
                raise ValueError(f"prompt {i} is empty: a prompt holds at least boq and eoq")
            if len(p) + len(prefixes[i]) >= context_len:
                self.stats.overlong_prompts += 1
            else:
                waiting.append([i, num_samples])
        if not waiting:
            return results
        longest = max(len(prompts[i]) + len(prefixes[i]) for i, _ in waiting)
        cache_len = cache_length(longest + max_new_tokens, context_len)
        batch = self._batch_size(batch_size, len(waiting) * num_samples, cache_len)
        decode = DecodeBatch(self.model, batch, cache_len, context_len, max_new_tokens, self.eoa, sampling,
                             self.decode_attention, stop_ids)
        if self.cuda_graphs and max_new_tokens > 1:  # one new token (multiple choice) is the prefill's alone
            decode.capture()

        occupant: list[int | None] = [None] * batch  # the sequence each slot decodes
        bar = tqdm(total=len(waiting) * num_samples, desc="generate", unit="seq", disable=not progress,
                   dynamic_ncols=True, mininterval=2)
        progress_state = {"tokens": 0, "start": time.perf_counter()}
        while True:
            self._harvest(decode, occupant, results, bar, progress_state, stop_ids)
            free = deque(r for r, s in enumerate(occupant) if s is None)
            decoding = len(free) < batch
            while waiting and free:
                self._admit_chunk(decode, prompts, prefixes, waiting, free, occupant, num_samples)
                if decoding:
                    break  # one chunk, then back to the running sequences
            if all(s is None for s in occupant):
                break
            if max_new_tokens > 1:
                decode.run(self.steps_per_check)
                self.stats.decode_steps += self.steps_per_check
        bar.close()
        return results

    def _admit_chunk(self, decode: DecodeBatch, prompts, prefixes, waiting: deque, free: deque, occupant,
                     num_samples) -> None:
        """Prefill the next waiting prompts (up to prefill_tokens, at least one) into free slots."""
        chunk, chunk_prefixes, rows, sequences, tokens = [], [], [], [], 0
        while waiting and free:
            i, remaining = waiting[0]
            if chunk and tokens + len(prompts[i]) + len(prefixes[i]) > self.prefill_tokens:
                break
            take = min(remaining, len(free))
            slots = [free.popleft() for _ in range(take)]
            first = i * num_samples + num_samples - remaining
            chunk.append(prompts[i])
            chunk_prefixes.append(prefixes[i])
            rows.append(slots)
            sequences.append(list(range(first, first + take)))
            for slot, sequence in zip(slots, sequences[-1]):
                occupant[slot] = sequence
            tokens += len(prompts[i]) + len(prefixes[i])
            waiting[0][1] -= take
            if waiting[0][1] == 0:
                waiting.popleft()
        decode.prefill(chunk, chunk_prefixes, rows, sequences, self.prefill_backend, self.prefill_length(tokens))
        self.stats.prefill_tokens += tokens
        self.stats.prefill_chunks += 1

    def _harvest(self, decode: DecodeBatch, occupant, results, bar, progress_state, stop_ids) -> None:
        """Collect the sequences that ended since the last look and free their slots."""
        if all(s is None for s in occupant):
            return
        active, generated, at_eoa = torch.stack([decode.active, decode.generated, decode.stopped_at_eoa]).tolist()
        ended = [r for r, s in enumerate(occupant) if s is not None and not active[r]]
        if not ended:
            return
        for r, out in zip(ended, decode.out[ended].tolist()):
            results[occupant[r]] = out[:generated[r]]
            progress_state["tokens"] += generated[r]
            if at_eoa[r]:
                self.stats.stopped_at_eoa += 1
            elif not (results[occupant[r]] and results[occupant[r]][-1] in stop_ids):
                self.stats.hit_token_limit += 1
            occupant[r] = None
        bar.update(len(ended))
        elapsed = time.perf_counter() - progress_state["start"]
        bar.set_postfix_str(f"{progress_state['tokens'] / max(elapsed, 1e-9):.0f} tokens/s", refresh=False)

    def _batch_size(self, requested: int | str, sequences: int, cache_len: int) -> int:
        """Slots to decode with: the request, or with "auto" as many as fit the free GPU memory (16
        on CPU), shrunk to fit that memory, and to the next power of two >= the number of sequences
        (a benchmark's last, partial batch then reuses the compiled shape of a full one)."""
        fit = None
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            fit = max(1, (free - RESERVED_BYTES) // self.model.kv_cache_bytes_per_row(cache_len))
        if requested == "auto":
            want = min(fit, 512) if fit is not None else 16
        else:
            want = int(requested)
            if want < 1:
                raise ValueError(f"batch_size={requested} must be >= 1 or 'auto'")
            if fit is not None and want > fit:
                print(f"[generate] batch_size={want} does not fit the free GPU memory with a {cache_len}-token "
                      f"cache; using {fit}", flush=True)
                want = fit
        return max(1, min(want, 1 << (sequences - 1).bit_length()))

    def generate(self, prompts: list[str], condition: str, max_new_tokens: int, temperature: float = 0.0,
                 num_samples: int = 1, batch_size: int | str = 16, seed: int = 0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, progress: bool = True) -> list[list[str]]:
        """The evaluation protocol: `num_samples` decoded generations per prompt."""
        encoded = [self.encode_prompt(p, condition) for p in prompts]
        outputs = self.sample_ids(encoded, max_new_tokens, temperature, num_samples, batch_size, seed,
                                  top_k=top_k, top_p=top_p, min_p=min_p, progress=progress)
        texts = [self.tokenizer.decode(ids) for ids in outputs]
        return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]

    def sample_ids(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, num_samples: int,
                   batch_size: int | str, seed: int = 0, context_len: int | None = None, top_k: int = 0,
                   top_p: float = 1.0, min_p: float = 0.0, progress: bool = True) -> list[list[int]]:
        """`generate_ids` of `num_samples` samples per prompt, where greedy samples, all alike, are
        decoded once and repeated."""
        decoded = 1 if Sampling(temperature, top_k, top_p, min_p, seed).greedy else num_samples
        outputs = self.generate_ids(prompts, max_new_tokens, temperature, batch_size, seed, context_len=context_len,
                                    num_samples=decoded, top_k=top_k, top_p=top_p, min_p=min_p, progress=progress)
        return [list(ids) for ids in outputs for _ in range(num_samples // decoded)]


def cache_length(tokens: int, context_len: int) -> int:
    """The KV cache length for sequences of up to `tokens` tokens."""
    return min(context_len, max(MIN_CACHE_LEN, 1 << (tokens - 1).bit_length()))


def prefill_bucket(tokens: int) -> int:
    """The packed length a padded prefill of `tokens` runs at."""
    return next((b for b in PREFILL_BUCKETS if tokens <= b), round_up(tokens, PREFILL_BUCKETS[-1]))


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


def read_heldout(path: str) -> list[tuple[str, dict]]:
    """(where, row) per row of a held-out JSONL or Parquet file of {"instruction", "response",
    "condition"} rows; `where` ("file:line") names the row in errors."""
    file = Path(path)
    if not file.is_file():
        problem = "is a folder" if file.is_dir() else "does not exist"
        raise DataError(f"--heldout {file} {problem}; give a JSONL file of "
                        '{"instruction", "response", "condition"} rows (the demo writes DATA/heldout.jsonl)')
    if file.suffix not in SOURCE_SUFFIXES:
        raise DataError(f"--heldout {file}: unsupported file type; give a {' or '.join(SOURCE_SUFFIXES)} file")
    rows = [(where, {"instruction": instruction, "response": response, "condition": ",".join(conditions)})
            for where, instruction, response, conditions in read_rows(file)]
    if not rows:
        raise DataError(f"--heldout {file} holds no rows; an accuracy over 0 problems means nothing")
    return rows


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} must be >= 1")
    return number


def _batch_size_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}; give a number >= 1 or 'auto'") from None


def _check_sampling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Sampling's own checks, reported against the flag (its messages start with the field name)."""
    try:
        Sampling(args.temperature, args.top_k, args.top_p, args.min_p, args.seed)
    except ValueError as err:
        parser.error(f"argument --{str(err).split('=')[0].replace('_', '-')}: {err}")
    if args.num_samples > 1 and Sampling(args.temperature, args.top_k).greedy:
        parser.error(f"argument --num-samples: {args.num_samples} greedy generations (--temperature 0 or "
                     "--top-k 1) are all alike; give --temperature > 0 to sample")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python simple_inference_engine.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "generate": ("print generations for prompts",
                     'python simple_inference_engine.py generate --run RUN_DIR --prompt "add 17 25" '
                     "--temperature 0.8 --num-samples 4"),
        "heldout": ("exact-match accuracy of greedy generations against a held-out file's responses",
                    "python simple_inference_engine.py heldout --run RUN_DIR --heldout DATA/heldout.jsonl"),
    }
    for name, (summary, example) in commands.items():
        p = sub.add_parser(name, help=summary, description=f"{summary}.", epilog=f"example:\n  {example}",
                           formatter_class=_HelpFormatter)
        p.set_defaults(command_parser=p)  # for errors under the subcommand's usage
        p.add_argument("--run", required=True, help="run directory written by pretrain.py")
        p.add_argument("--ckpt-epoch", type=int, default=None, help="checkpoint of this epoch (default: the latest)")
        p.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA")
        p.add_argument("--max-new-tokens", type=positive_int, default=64, help="response tokens at most")
        p.add_argument("--batch-size", type=_batch_size_arg, default=64,
                       help="sequences decoded at once, or 'auto' (as many as the free GPU memory holds)")
    gen = sub.choices["generate"]
    gen.add_argument("--prompt", required=True, action="append", help="prompt text (repeatable)")
    gen.add_argument("--condition", default="direct", help="condition token(s) after boq: a name or a comma list")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="keep the most likely tokens of this mass (1: off)")
    gen.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability (0: off)")
    gen.add_argument("--num-samples", type=positive_int, default=1, help="generations per prompt (needs sampling)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    held = sub.choices["heldout"]
    held.add_argument("--heldout", required=True, help="JSONL rows with instruction, response, condition")
    held.add_argument("--report", action="store_true",
                      help="also print the run's first and last logged loss and what to run next")
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default shown where it has one; the example kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in action.help:
            return action.help
        return f"{action.help} (default: {action.default})"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # everything checkable without the weights fails before they load
    rows = []
    try:
        if args.command == "generate":
            _check_sampling(args.command_parser, args)
        else:
            rows = read_heldout(args.heldout)
        engine = SimpleEngine.from_checkpoint(args.run, args.ckpt_epoch, use_ema=not args.no_ema)
        if args.command == "generate":
            engine.condition_names(args.condition, f"--condition {args.condition}")
        for where, row in rows:
            engine.condition_names(row["condition"], where)
    except (CheckpointError, RunDirError, DataError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if engine.device.type == "cpu":  # the program's choice, not the library's: callers keep their own
        set_cpu_threads(engine.model.arch.hidden_size)
    if args.command == "generate":
        outs = engine.generate(args.prompt, args.condition, args.max_new_tokens, args.temperature,
                               num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                               top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)
        for prompt, out in zip(args.prompt, outs):
            print(prompt + "".join(f"\n  -> {text}" for text in out))
    else:
        rows = [row for _, row in rows]
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
