"""Export a pretrain.py checkpoint as a native Transformers `hrm_text` model directory.

    python -m conversion.convert_to_hf --ckpt_path RUN_DIR --out_dir OUT [--ckpt_epoch E]
        [--ckpt_use_ema true|false] [--tokenizer_path PATH]

Writes config.json (model_type hrm_text), model.safetensors, the tokenizer (bos = boq,
eos = eoa, pad = pad) and hrm_text_conditions.json (the special tokens and condition tokens that
build a prompt). OUT must be new, empty or an earlier export, whose files (listed in
OUT/.convert_to_hf_manifest.json) are replaced; other files there stay. Loads with
`AutoModelForCausalLM.from_pretrained(OUT)`, no remote code; pass `token_type_ids` = 1 on the
prompt for its bidirectional attention.

Which nets export: `hrm` (pre-norm, no H_override) maps 1:1; `transformer` maps onto hrm_text
with H_cycles=1, L_cycles=0 and a zero z_L_init (the single stack becomes the H module; the
never-called L module holds a copy). The others (trm, trm_match_recurrence, rins, ut) differ in
how stack calls are combined, which hrm_text cannot express: they fail with that message.
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

EXPORTABLE = ("hrm", "transformer")
TOOL = "convert_to_hf"  # its manifest: OUT/.convert_to_hf_manifest.json (data_io.outputs.Manifest)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def check_exportable(arch) -> None:
    problems = []
    if arch.net not in EXPORTABLE:
        problems.append(f"net {arch.net!r} has no faithful hrm_text form (exportable nets: {', '.join(EXPORTABLE)})")
    if arch.norm_type != "pre":
        problems.append(f"norm_type={arch.norm_type} (hrm_text blocks are pre-norm)")
    if arch.pos_emb_type != "rope":
        problems.append(f"pos_emb_type={arch.pos_emb_type} (hrm_text applies RoPE)")
    if arch.inject_input:
        problems.append("inject_input=true (hrm_text's L calls see z_L + z_H only)")
    if arch.H_override:
        problems.append(f"H_override={arch.H_override} (hrm_text's H and L stacks share one shape)")
    if arch.net == "hrm" and not arch.half_layers and arch.stack("L").n_layers != arch.stack("H").n_layers:
        problems.append("H and L stacks of different depth")
    if problems:
        raise SystemExit("cannot export to hrm_text: " + "; ".join(problems))


def stack_tensors(prefix: str, stack, out: dict) -> None:
    """Split our fused projections into hrm_text's separate ones."""
    for i, layer in enumerate(stack.layers):
        p = f"{prefix}.layers.{i}"
        gate, q, k, v = layer.attn.gqkv_proj.weight.detach().chunk(4, dim=0)
        out.update({f"{p}.self_attn.gate_proj.weight": gate, f"{p}.self_attn.q_proj.weight": q,
                    f"{p}.self_attn.k_proj.weight": k, f"{p}.self_attn.v_proj.weight": v,
                    f"{p}.self_attn.o_proj.weight": layer.attn.o_proj.weight.detach()})
        mlp_gate, mlp_up = layer.mlp.gate_up_proj.weight.detach().chunk(2, dim=0)
        out.update({f"{p}.mlp.gate_proj.weight": mlp_gate, f"{p}.mlp.up_proj.weight": mlp_up,
                    f"{p}.mlp.down_proj.weight": layer.mlp.down_proj.weight.detach()})


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": model.embed_tokens.weight.detach(),
           "lm_head.weight": model.lm_head.weight.detach()}
    stacks = model.net.stacks
    if model.arch.net == "hrm":
        stack_tensors("model.L_module", stacks["L"], out)
        stack_tensors("model.H_module", stacks["H"], out)
        out["model.z_L_init"] = model.net.z_L_init.detach()
    else:  # transformer: H(x + 0) == f(x)
        stack_tensors("model.H_module", stacks["L"], out)
        stack_tensors("model.L_module", stacks["L"], out)
        out["model.z_L_init"] = torch.zeros_like(model.net.z_L_init)
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_config(arch, vocab_size: int, context_len: int, bos_token_id: int, eos_token_id: int, pad_token_id: int | None):
    from transformers import HrmTextConfig

    stack = arch.stack("L")
    is_hrm = arch.net == "hrm"
    return HrmTextConfig(
        vocab_size=vocab_size, hidden_size=arch.hidden_size, intermediate_size=stack.intermediate_size,
        num_hidden_layers=stack.n_layers, num_attention_heads=arch.num_heads, head_dim=arch.head_dim,
        max_position_embeddings=context_len, rms_norm_eps=arch.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(arch.rope_theta)},
        H_cycles=arch.H_cycles if is_hrm else 1, L_cycles=arch.L_cycles if is_hrm else 0,
        initializer_range=arch.embedding_std, embedding_scale=1.0 / arch.embedding_std,
        prefix_lm=arch.attn_type == "prefixlm", tie_word_embeddings=False,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )


def export_tokenizer(tokenizer, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    # The run's tokenizer_info names the strings; a data_io one has no pad (generation pads with eoa).
    specials = dict(bos_token=tokenizer.boq, eos_token=tokenizer.eoa)
    if tokenizer.pad is not None:
        specials["pad_token"] = tokenizer.pad
    if tokenizer.kind == "hf":
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, **specials)
    else:
        from transformers.integrations.tiktoken import convert_tiktoken_to_fast

        convert_tiktoken_to_fast(tokenizer.backend, str(out_dir))
        # Added tokens get the ids right after the vocabulary, whatever tokenizer.json says, while
        # text_tokenizer put ours above the encoding's max_token_value, past the encoding's own
        # specials (which our encoding never emits, so they go). Unreachable placeholders fill the
        # vocabulary up to there (no merge produces them), so ours land on their exact ids.
        tokenizer_json = out_dir / "tokenizer.json"
        spec = json.loads(tokenizer_json.read_text())
        vocab = spec["model"]["vocab"]
        taken = set(vocab.values())
        vocab.update({f"<|unused_{i}|>": i for i in range(min(tokenizer.special_ids.values())) if i not in taken})
        spec["added_tokens"] = [{"id": token_id, "content": token, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True}
                                for token, token_id in sorted(tokenizer.special_ids.items(), key=lambda kv: kv[1])]
        tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False))
        fast = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), **specials)
    exported = {token: fast.convert_tokens_to_ids(token) for token in tokenizer.special_ids}
    if exported != tokenizer.special_ids:
        raise RuntimeError(f"exported tokenizer's special-token ids {exported} differ from the run's "
                           f"{tokenizer.special_ids}; the export would feed the model wrong tokens")
    fast.save_pretrained(str(out_dir))
    prompt = {k: v for k, v in tokenizer.info().items() if k not in ("kind", "vocab_size", "tokenizer_path")}
    (out_dir / "hrm_text_conditions.json").write_text(json.dumps(prompt, indent=1))


def check_out_dir(out_dir: Path, manifest) -> None:
    """Refuse an output folder that holds anything but an earlier export of this tool (a folder
    without the tool's manifest, or an entry the export would replace that the manifest lacks)."""
    from data_io import DataError

    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out_dir {out_dir} is a file; give a new or empty folder")
    if out_dir.is_dir() and not manifest.names and any(out_dir.iterdir()):
        raise DataError(f"--out_dir {out_dir} is not empty and holds no earlier export (no {manifest.file.name}); "
                        "give a new or empty folder (an export written before this tool kept a manifest counts as foreign: "
                        "delete it first)")


def convert(ckpt_path, out_dir, ckpt_epoch=None, use_ema=True, tokenizer_path=None) -> Path:
    """Write the export into a staging folder beside `out_dir`, then move its files in: an earlier
    export there is replaced (its files that this one lacks are removed), nothing else is touched,
    and a failure leaves `out_dir` as it was."""
    from safetensors.torch import save_file

    from data_io.outputs import Manifest
    from data_io.text_tokenizer import tokenizer_from_info
    from training.run_dir import load_run

    out_dir = Path(out_dir)
    manifest = Manifest(out_dir, TOOL)
    check_out_dir(out_dir, manifest)
    model, tokenizer, context_len, checkpoint = load_run(ckpt_path, ckpt_epoch, use_ema=use_ema)
    check_exportable(model.arch)
    if tokenizer_path:  # with the run's special-token strings
        tokenizer = tokenizer_from_info(tokenizer.info(), Path(ckpt_path), override=tokenizer_path)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = hf_config(model.arch, model.vocab_size, context_len, tokenizer.boq_id, tokenizer.eoa_id, tokenizer.pad_id)
    config.architectures = ["HrmTextForCausalLM"]
    config.save_pretrained(str(staging))
    save_file(hf_state_dict(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
    export_tokenizer(tokenizer, staging)
    written = sorted(p.name for p in staging.iterdir())
    manifest.check_free(written)
    for name in written:
        os.replace(staging / name, manifest.claim(name))
    manifest.prune(written)
    staging.rmdir()
    print(f"exported {checkpoint} ({'EMA' if use_ema else 'live'} weights, net {model.arch.net}) to {out_dir}")
    return out_dir


def _tokenizer_arg(value: str) -> str:
    """A tokenizer.json, a folder holding one, or tiktoken:NAME (what data_io's load_tokenizer takes)."""
    path = Path(value)
    if value.startswith("tiktoken:") or path.is_file() or (path / "tokenizer.json").is_file():
        return value
    raise argparse.ArgumentTypeError(f"{value}: no tokenizer.json there; give a tokenizer.json, a folder holding one, "
                                     "or tiktoken:NAME")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conversion.convert_to_hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="run directory written by pretrain.py")
    parser.add_argument("--out_dir", required=True,
                        help="output model directory: new, empty, or an earlier export of this tool (replaced)")
    parser.add_argument("--ckpt_epoch", type=int, default=None, help="checkpoint at the end of this epoch (default: latest)")
    parser.add_argument("--ckpt_use_ema", type=_bool, default=True, help="export the EMA weights (default true)")
    parser.add_argument("--tokenizer_path", type=_tokenizer_arg, default=None,
                        help="tokenizer to ship instead of the run's copy: a tokenizer.json or tiktoken:NAME")
    args = parser.parse_args(argv)
    from data_io import DataError
    from training.checkpoint import CheckpointError
    from training.run_dir import RunDirError

    try:
        convert(args.ckpt_path, args.out_dir, args.ckpt_epoch, args.ckpt_use_ema, args.tokenizer_path)
    except (CheckpointError, RunDirError, DataError, FileNotFoundError) as err:
        raise SystemExit(f"convert_to_hf: {err}") from None


if __name__ == "__main__":
    main()
