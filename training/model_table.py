"""Print parameters and executed GFLOP per token for every net x size (the README table).

    python -m training.model_table [--vocab-size 151808] [--context 2048] [--sizes B L XL XXL XXL_wide]

Models are built on the meta device (no memory). GFLOP/token is one training step's executed work
at full gradient depth (bp_max_steps), counted by models/flops.py.
"""

import argparse
from pathlib import Path

import torch

from models.flops import executed_flops_per_token
from models.model import LanguageModel
from models.nets import NET_CLASSES
from training.config import compose

GPU_SIZES = ["B", "L", "XL", "XXL", "XXL_wide"]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(net: str, size: str, vocab_size: int) -> LanguageModel:
    arch = compose("cfg_pretrain", [f"arch/net@arch={net}", f"arch/size@arch={size}"]).arch
    with torch.device("meta"):
        return LanguageModel(arch, vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training.model_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=65536, help="model vocabulary (default: 65536)")
    parser.add_argument("--context", type=int, default=2048, help="context length for attention FLOPs (default: 2048)")
    parser.add_argument("--sizes", nargs="+", default=GPU_SIZES,
                        help=f"sizes from config/arch/size (default: {' '.join(GPU_SIZES)})")
    args = parser.parse_args()
    known = sorted(p.stem for p in (Path(__file__).parents[1] / "config" / "arch" / "size").glob("*.yaml"))
    if unknown := [size for size in args.sizes if size not in known]:
        parser.error(f"--sizes: unknown {', '.join(unknown)}; config/arch/size has {', '.join(known)}")

    print(f"params (M) / executed training GFLOP per token (context {args.context}, vocab {args.vocab_size})\n")
    print("| net | " + " | ".join(args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for net in NET_CLASSES:
        cells = []
        for size in args.sizes:
            model = build_on_meta(net, size, args.vocab_size)
            flops = executed_flops_per_token(model.arch, args.vocab_size, args.context)
            cells.append(f"{count_parameters(model) / 1e6:,.0f}M / {flops / 1e9:.1f}")
        print(f"| {net} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
