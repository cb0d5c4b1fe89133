"""lm-evaluation-harness model `hrm_text`: any lm-eval task on a native training run.

    python -m evaluation.lm_eval_model --model hrm_text --model_args ckpt_path=RUN --tasks TASK ...

takes lm-eval's own command line (lm-eval 0.4.13's `lm_eval` finds only the models of its own
package, so this entry point registers `hrm_text` and then runs lm-eval's CLI; docs/EVALUATION.md
says more). In Python, importing this module registers the model for
`lm_eval.simple_evaluate(model="hrm_text", ...)`.

The model is a prefix LM: each request's context is framed as training framed instructions
(boq + condition tokens + context + eoq) and attended bidirectionally; the continuation is the
response, read causally. `generate_until` runs the native engine (greedy unless the task asks
for a temperature) and cuts the text at the first `until` string; `loglikelihood` scores the
continuation in one packed forward per batch. model_args: ckpt_path (a training run) or
pretrained (an export: the Transformers engine, token_type_ids over the prompt), ckpt_epoch,
use_ema, condition (default direct; "synth+cot" for several), max_context (default: the model's
context); batch_size and device come from lm-eval's --batch_size and --device (cpu where no CUDA
device exists and none is given).
"""

import itertools
import sys

import torch
from lm_eval.api.model import LM
from lm_eval import utils as lm_eval_utils
from lm_eval.api.registry import register_model
from tqdm import tqdm

from evaluation.engines import NativeEngine, TransformersEngine


@register_model("hrm_text")
class HrmTextLM(LM):
    def __init__(self, ckpt_path: str | None = None, pretrained: str | None = None, ckpt_epoch: int | None = None,
                 use_ema: bool = True, condition: str = "direct", max_context: int | None = None,
                 batch_size: int | str = 16, device: str | None = None, engine=None, **_ignored):
        super().__init__()
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"hrm_text: device {device!r} asked for (lm-eval's default), but CUDA is not "
                             "available; pass --device cpu")
        if engine is None and pretrained is not None:
            engine = TransformersEngine(pretrained, device=device)
        elif engine is None:
            if ckpt_path is None:
                raise ValueError("hrm_text needs model_args ckpt_path=RUN (a pretrain.py run directory) "
                                 "or pretrained=EXPORT_DIR (a conversion.convert_to_hf export)")
            from simple_inference_engine import SimpleEngine

            engine = SimpleEngine.from_checkpoint(str(ckpt_path), ckpt_epoch=ckpt_epoch and int(ckpt_epoch),
                                                  use_ema=str(use_ema).lower() != "false", device=device)
        self.export = isinstance(engine, TransformersEngine)
        self.native = None if self.export else engine
        self.engine = engine if self.export else NativeEngine(engine)
        # model_args are comma-separated, so several conditions are joined with "+" there
        self.condition = condition.replace("+", ",")
        self.max_context = int(max_context) if max_context else engine.context_len
        # lm-eval passes batch_size "auto" or a number
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16

    @staticmethod
    def _refuse_given_twice(arg_keys, additional_config) -> None:
        # lm-eval's command line always passes --batch_size (default 1) and --device as keywords
        flags = {key for key, value in (additional_config or {}).items() if value is not None}
        if twice := sorted(flags & set(arg_keys)):
            raise ValueError(f"hrm_text: {', '.join(twice)} given in --model_args; pass "
                             f"{' '.join('--' + key for key in twice)} instead")

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        cls._refuse_given_twice(arg_dict, additional_config)
        return super().create_from_arg_obj(arg_dict, additional_config)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        cls._refuse_given_twice(lm_eval_utils.simple_parse_args_string(arg_string), additional_config)
        return super().create_from_arg_string(arg_string, additional_config)

    # ---- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        for indices in tqdm(groups.values(), desc="hrm_text generate_until", disable=disable_tqdm):
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", True) else 0.0
            max_new = int(kwargs.get("max_gen_toks", 256))
            contexts = [requests[i].args[0] for i in indices]
            outputs = self.engine.generate(contexts, self.condition, max_new, temperature, 1, self.batch_size,
                                           max_context=self.max_context)
            for i, (text,) in zip(indices, outputs):
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                results[i] = str(text)
        return results

    # ---- scoring
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode(*request.args) for request in requests]
        results = []
        for start in tqdm(range(0, len(pairs), self.batch_size), desc="hrm_text loglikelihood",
                          disable=disable_tqdm):
            results += self._score(pairs[start:start + self.batch_size])
        return results

    def _encode(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if self.export:
            prompt = self.engine.encode_prompt(context, self.condition)
            response = self.engine.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        else:
            prompt = self.native.encode_prompt(context, self.condition)
            response = self.native.tokenizer.encode_batch([continuation])[0]
        if len(prompt) + len(response) > self.max_context:
            raise ValueError(f"hrm_text: a request of {len(prompt) + len(response)} tokens exceeds max_context "
                             f"{self.max_context}; pass model_args max_context=N or shorten the task's context")
        return prompt, response

    @staticmethod
    def _continuation_scores(logprobs: torch.Tensor, first: int, response: list[int]) -> tuple[float, bool]:
        """(sum of log-probabilities, greedy?) of `response` starting at token `first` of a
        sequence whose log-softmaxed logits are `logprobs` (the token at t is predicted at t - 1)."""
        steps = logprobs[first - 1:first - 1 + len(response)]
        target = torch.tensor(response, device=logprobs.device)
        return float(steps.gather(-1, target[:, None]).sum()), bool((steps.argmax(-1) == target).all())

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Continuation log-probabilities, each prompt attending bidirectionally within itself and
        its continuation causally: one packed forward (native), or token_type_ids = 1 over the
        prompt (export)."""
        if self.export:
            results = []
            for prompt, response in pairs:
                ids = torch.tensor([prompt + response], device=self.engine.device)
                token_type_ids = torch.zeros_like(ids)
                token_type_ids[0, :len(prompt)] = 1
                logits = self.engine.model(input_ids=ids, token_type_ids=token_type_ids).logits[0]
                results.append(self._continuation_scores(logits.float().log_softmax(-1), len(prompt), response))
            return results
        sequences = [prompt + response for prompt, response in pairs]
        logprobs = self.native.packed_logits(sequences, [len(p) for p, _ in pairs]).float().log_softmax(-1)
        starts = itertools.accumulate((len(s) for s in sequences), initial=0)
        return [self._continuation_scores(logprobs[start:start + len(p) + len(r)], len(p), r)
                for (p, r), start in zip(pairs, starts)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("hrm_text is an instruction-framed prefix LM: it scores a continuation given a "
                                  "context (loglikelihood) and generates (generate_until); rolling perplexity "
                                  "over plain text is not defined for it")


def command_line(argv: list[str], cuda: bool) -> list[str]:
    """lm-eval's arguments, with `--device cpu` added where no CUDA device exists and none was
    asked for (lm-eval's default device, cuda:0, would stop the run)."""
    if cuda or any(arg == "--device" or arg.startswith("--device=") for arg in argv):
        return argv
    return [*argv, "--device", "cpu"]


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    if {"-h", "--help"} & set(sys.argv[1:]):  # lm-eval's help follows, which does not know hrm_text
        print(__doc__)
    argv = command_line(sys.argv[1:], torch.cuda.is_available())
    if argv != sys.argv[1:]:
        print("[hrm_text] no CUDA device: running with --device cpu", file=sys.stderr)
    sys.argv[1:] = argv
    cli_evaluate()


if __name__ == "__main__":
    main()
