"""Generation engines: the protocol evaluation.main talks to, and `build_engine`.

An engine turns instructions into responses. A prompt is plain text; the engine wraps it as the
model was trained: boq + the condition's special token + prompt tokens + eoq, and generates until
eoa or `max_new_tokens`. Engines:
  - the native `SimpleEngine` (simple_inference_engine.py) for a training run directory;
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


class Engine(Protocol):
    def known_conditions(self) -> list[str]:
        """The condition names this model's tokenizer maps to special tokens."""
        ...

    def generate(self, prompts: list[str], condition: str, max_new_tokens: int, temperature: float,
                 num_samples: int, batch_size: int) -> list[list[str]]:
        """`num_samples` responses per prompt (decoded text without special tokens), in prompt order.

        temperature 0 is greedy decoding. batch_size bounds the sequences decoded at once (a prompt
        with num_samples samples counts num_samples). An unknown condition raises
        `UnknownConditionError`.
        """
        ...


class UnknownConditionError(ValueError):
    pass


def require_known_condition(condition: str, known: list[str]) -> None:
    if condition not in known:
        raise UnknownConditionError(f"unknown condition {condition!r}; this model knows: {', '.join(known)}")


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
            self.condition_prefix = {name: ids([spec["boq"], token])
                                     for name, token in spec["condition_mapping"].items()}
            self.suffix = ids([spec["eoq"]])
            self.eos_id = ids([spec["eoa"]])[0]
            self.prefix_lm = True
        else:
            bos = self.tokenizer.bos_token_id
            self.condition_prefix = {PLAIN_CONDITION: [] if bos is None else [bos]}
            self.suffix = []
            self.eos_id = self.tokenizer.eos_token_id
            self.prefix_lm = False
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else pad

    def _token_ids(self, tokens: list[str]) -> list[int]:
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        missing = [t for t, i in zip(tokens, ids) if i is None or i == self.tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"{CONDITIONS_FILE} names tokens the tokenizer lacks: {missing}")
        return ids

    def known_conditions(self) -> list[str]:
        return list(self.condition_prefix)

    def generate(self, prompts, condition, max_new_tokens, temperature, num_samples, batch_size, seed: int = 0):
        require_known_condition(condition, self.known_conditions())
        if temperature > 0:
            self.torch.manual_seed(seed)  # sampled runs repeat, as the native engine's do
        encoded = [self.condition_prefix[condition] + ids + self.suffix
                   for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        # Greedy samples are all alike: decode once and repeat (generate refuses greedy with
        # num_return_sequences > 1).
        sampled = num_samples if temperature > 0 else 1
        per_batch = max(1, batch_size // sampled)
        results = []
        for start in range(0, len(encoded), per_batch):
            texts = self._generate_batch(encoded[start:start + per_batch], max_new_tokens, temperature, sampled)
            results += [texts[i * sampled:(i + 1) * sampled] * (num_samples // sampled)
                        for i in range(len(texts) // sampled)]
        return results

    def _generate_batch(self, batch: list[list[int]], max_new_tokens: int, temperature: float,
                        num_samples: int) -> list[str]:
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
        texts = []
        for row in output[:, width:].tolist():
            if self.eos_id in row:
                row = row[:row.index(self.eos_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts


def build_engine(cfg) -> Engine:
    """The engine for `cfg.ckpt_path`: a Hugging Face model directory (it holds config.json) gets the
    Transformers engine, anything else is a training run directory for the native engine."""
    path = Path(cfg.ckpt_path)
    if (path / "config.json").is_file():
        return TransformersEngine(path)
    from simple_inference_engine import SimpleEngine

    return SimpleEngine.from_checkpoint(str(path), ckpt_epoch=cfg.ckpt_epoch, use_ema=cfg.use_ema,
                                        arch_override=dict(cfg.arch_override or {}))
