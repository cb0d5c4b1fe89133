"""Generation engines: the protocol evaluation.main talks to, and `build_engine`.

An engine turns instructions into responses. A prompt is plain text; the engine wraps it as the
model was trained: boq + one special token per condition + prompt tokens + eoq, and generates until
eoa, `max_new_tokens` or the end of `max_context` (`finish`: the reference's rules, the same in
every engine). Engines:
  - `NativeEngine` over `SimpleEngine` (simple_inference_engine.py) for a training run directory;
  - `TransformersEngine` below for any Hugging Face model directory (an exported hrm_text
    checkpoint or a baseline model).
"""

import json
from pathlib import Path
from typing import Protocol

# Written next to an exported model's config.json (conversion/convert_to_hf.py), read here:
# {"condition_mapping": {"direct": "<|direct|>", ...}, "boq": "<|boq|>", "eoq": "<|eoq|>", "eoa": "<|eoa|>"}
CONDITIONS_FILE = "hrm_text_conditions.json"

# A model directory without CONDITIONS_FILE (a baseline model) knows no conditions: its one
# condition is the raw prompt text after the tokenizer's bos, with the tokenizer's eos as stop.
PLAIN_CONDITION = "plain"


class Generation(str):
    """A response, and why it ended: "eoa", "length" (max_tokens reached or the context full) or
    "overlong" (the prompt did not fit the context; the response is empty, as in the reference)."""

    stop: str

    def __new__(cls, text: str, stop: str):
        generation = super().__new__(cls, text)
        generation.stop = stop
        return generation


def finish(prompt_len: int, generated: list[int], eoa: int, max_new_tokens: int, max_context: int,
           decode) -> Generation:
    """The reference's limits on one sequence: a prompt of max_context tokens or more is not run;
    otherwise at most min(max_new_tokens, max_context - prompt_len) tokens are kept, so prompt and
    response together never exceed max_context."""
    budget = min(max_new_tokens, max_context - prompt_len)
    if budget <= 0:
        return Generation("", "overlong")
    ids = list(generated[:budget])
    if eoa in ids:
        return Generation(decode(ids[:ids.index(eoa)]), "eoa")
    return Generation(decode(ids), "length" if len(ids) >= budget else "eoa")


class Engine(Protocol):
    def known_conditions(self) -> list[str]:
        """The condition names this model's tokenizer maps to special tokens."""
        ...

    def generate(self, prompts: list[str], condition: str, max_new_tokens: int, temperature: float,
                 num_samples: int, batch_size: int, seed: int = 0,
                 max_context: int | None = None) -> list[list[Generation]]:
        """`num_samples` responses per prompt (decoded text), in prompt order.

        `condition` is one name or a comma list ("synth,cot": one token each, in that order).
        temperature 0 is greedy decoding. batch_size bounds the sequences decoded at once (a prompt
        with num_samples samples counts num_samples). `max_context` bounds prompt + response
        tokens as `finish` says (None: the model's own context). An unknown condition raises
        `UnknownConditionError`.
        """
        ...


class UnknownConditionError(ValueError):
    pass


def condition_names(condition: str) -> list[str]:
    return [name.strip() for name in condition.split(",") if name.strip()]


def require_known_condition(condition: str, known: list[str]) -> None:
    unknown = [name for name in condition_names(condition) if name not in known] or \
        ([] if condition_names(condition) else [condition])
    if unknown:
        raise UnknownConditionError(f"unknown condition {', '.join(map(repr, unknown))} in {condition!r}; "
                                    f"this model knows: {', '.join(known)}")


class NativeEngine:
    """The evaluation protocol over the native `SimpleEngine` of a training run."""

    def __init__(self, engine):
        self.engine = engine

    def known_conditions(self) -> list[str]:
        return self.engine.known_conditions()

    def generate(self, prompts, condition, max_new_tokens, temperature, num_samples, batch_size, seed=0,
                 max_context=None):
        require_known_condition(condition, self.known_conditions())
        max_context = max_context or self.engine.context_len
        encoded = [self.engine.encode_prompt(p, condition) for p in prompts]
        repeated = [ids for ids in encoded for _ in range(num_samples)]
        # The native cache holds max_context positions; it may produce one token more than the
        # budget when the context fills up, which `finish` cuts. The samples of a prompt share
        # one prefill (outputs are prompt-major, as `repeated`).
        outputs = self.engine.sample_ids(encoded, max_new_tokens, temperature, num_samples, batch_size, seed,
                                         context_len=max_context)
        decode = self.engine.tokenizer.decode
        texts = [finish(len(p), out, self.engine.eoa, max_new_tokens, max_context, decode)
                 for p, out in zip(repeated, outputs)]
        return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


class TransformersEngine:
    """`AutoModelForCausalLM.generate` over a Hugging Face model directory.

    For an hrm_text export the prompt is marked bidirectional with token_type_ids = 1 (PrefixLM);
    batches are left-padded, and generate derives position ids from the attention mask.
    """

    def __init__(self, model_dir: str | Path, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()

        spec_path = model_dir / CONDITIONS_FILE
        if spec_path.is_file():
            spec = json.loads(spec_path.read_text())
            ids = self._token_ids
            self.boq = ids([spec["boq"]])
            self.condition_ids = {name: ids([token])[0] for name, token in spec["condition_mapping"].items()}
            self.suffix = ids([spec["eoq"]])
            self.eos_id = ids([spec["eoa"]])[0]
            self.prefix_lm = True
        else:
            bos = self.tokenizer.bos_token_id
            self.boq = [] if bos is None else [bos]
            self.condition_ids = {PLAIN_CONDITION: None}
            self.suffix = []
            self.eos_id = self.tokenizer.eos_token_id
            self.prefix_lm = False
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else pad
        self.context_len = getattr(self.model.config, "max_position_embeddings", None)

    def _token_ids(self, tokens: list[str]) -> list[int]:
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        missing = [t for t, i in zip(tokens, ids) if i is None or i == self.tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"{CONDITIONS_FILE} names tokens the tokenizer lacks: {missing}")
        return ids

    def known_conditions(self) -> list[str]:
        return list(self.condition_ids)

    def encode_prompt(self, text: str, condition: str) -> list[int]:
        """boq + one token per condition + text + eoq (a baseline model: bos + text)."""
        require_known_condition(condition, self.known_conditions())
        conditions = [self.condition_ids[name] for name in condition_names(condition)]
        text_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.boq + [c for c in conditions if c is not None] + text_ids + self.suffix

    def generate(self, prompts, condition, max_new_tokens, temperature, num_samples, batch_size, seed=0,
                 max_context=None):
        max_context = max_context or self.context_len or 10**9
        if temperature > 0:
            self.torch.manual_seed(seed)  # sampled runs repeat, as the native engine's do
        encoded = [self.encode_prompt(p, condition) for p in prompts]
        fitting = [i for i, ids in enumerate(encoded) if len(ids) < max_context]
        # Greedy samples are all alike: decode once and repeat (generate refuses greedy with
        # num_return_sequences > 1).
        sampled = num_samples if temperature > 0 else 1
        per_batch = max(1, batch_size // sampled)
        outputs: dict[int, list[list[int]]] = {}
        for start in range(0, len(fitting), per_batch):
            batch = fitting[start:start + per_batch]
            budget = max(min(max_new_tokens, max_context - len(encoded[i])) for i in batch)
            rows = self._generate_batch([encoded[i] for i in batch], budget, temperature, sampled)
            for j, i in enumerate(batch):
                outputs[i] = rows[j * sampled:(j + 1) * sampled] * (num_samples // sampled)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # as the native engine
        return [[finish(len(ids), out, self.eos_id, max_new_tokens, max_context, decode)
                 for out in outputs.get(i, [[]] * num_samples)] for i, ids in enumerate(encoded)]

    def _generate_batch(self, batch: list[list[int]], max_new_tokens: int, temperature: float,
                        num_samples: int) -> list[list[int]]:
        torch = self.torch
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in batch], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
        extra = {"token_type_ids": attention_mask.clone()} if self.prefix_lm else {}
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
                **sampling, **extra)
        return output[:, width:].tolist()


def build_engine(cfg) -> Engine:
    """The engine for `cfg.ckpt_path`: a Hugging Face model directory (it holds config.json) gets the
    Transformers engine, anything else is a training run directory for the native engine."""
    path = Path(cfg.ckpt_path)
    if (path / "config.json").is_file():
        return TransformersEngine(path)
    from simple_inference_engine import SimpleEngine

    native = SimpleEngine.from_checkpoint(str(path), ckpt_epoch=cfg.ckpt_epoch, use_ema=cfg.use_ema,
                                          arch_override=dict(cfg.arch_override or {}))
    return NativeEngine(native)
