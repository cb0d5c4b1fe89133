"""The search `Policy` over the native engine (simple_inference_engine.SimpleEngine).

A request (problem, response prefix) becomes the problem's prompt (boq, condition, text, eoq) and
the prefix's tokens, which the engine feeds causally after the prompt as if it had generated them.
A step continuation stops at the first token whose text holds the step delimiter; its text is
cut after the delimiter.

FLOPs follow the model's counter (models/flops.py): a sequence of S tokens (prompt, prefix and
generated) costs S forward passes at `executed_flops_per_token(arch, vocab, S, training=False)`,
whose attention term is that of a causal context of S tokens.
"""

from functools import cache

from evaluation.search.methods import Completion
from models.flops import executed_flops_per_token


class EnginePolicy:
    def __init__(self, engine, condition: str, batch_size: int = 64, context_len: int | None = None):
        if not hasattr(engine, "generate_ids"):
            raise ValueError(f"test-time search runs on the native engine (a training run directory); "
                             f"{type(engine).__name__} cannot continue partial responses")
        self.engine = engine
        self.condition = condition
        self.batch_size = batch_size
        self.context_len = context_len  # None: the run's context
        self.eoa = engine.tokenizer.special_ids["<|eoa|>"]
        engine.encode_prompt("", condition)  # an unknown condition fails here, naming the known ones

    @cache
    def stop_ids(self, delimiter: str) -> frozenset[int]:
        tokenizer = self.engine.tokenizer
        ids = frozenset(i for i in range(tokenizer.vocab_size) if delimiter in tokenizer.decode([i]))
        if not ids:
            raise ValueError(f"no token of this tokenizer contains the step delimiter {delimiter!r}; "
                             "choose a delimiter its tokens produce (search.step_delimiter)")
        return ids

    def complete(self, requests, temperature, max_new_tokens, step_delimiter, seed):
        engine = self.engine
        prompts = {p: engine.encode_prompt(p, self.condition) for p in dict.fromkeys(p for p, _ in requests)}
        texts = [prefix for _, prefix in requests]
        prefix_ids = engine.tokenizer.encode_batch(texts) if any(texts) else [[] for _ in requests]
        stop = self.stop_ids(step_delimiter) if step_delimiter else frozenset()
        # One call for all requests: each is cut to its own budget afterwards (budgets differ only
        # for beams near the solution's token limit).
        outputs = engine.generate_ids([prompts[p] for p, _ in requests], max(max_new_tokens), temperature,
                                      self.batch_size, seed, stop_ids=stop, response_prefixes=prefix_ids,
                                      context_len=self.context_len)
        completions = []
        for (problem, _), prefix, ids, budget in zip(requests, prefix_ids, outputs, max_new_tokens):
            ids = ids[:budget]
            stepped = bool(ids) and ids[-1] in stop
            text = engine.tokenizer.decode(ids)
            if stepped:
                text = text[:text.index(step_delimiter) + len(step_delimiter)]
            completions.append(Completion(text, len(ids), len(prompts[problem]) + len(prefix), not stepped))
        return completions

    def flops(self, prompt_tokens: int, new_tokens: int) -> float:
        length = prompt_tokens + new_tokens
        return length * self._flops_per_token(length)

    @cache
    def _flops_per_token(self, length: int) -> float:
        model = self.engine.model
        return executed_flops_per_token(model.arch, model.vocab_size, length, training=False)
