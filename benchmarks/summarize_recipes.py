"""Tables of `benchmarks/tokenizer_recipes.sh`'s evaluations: the three recipes at their final step (PSNR, SSIM,
rFID, per-prefix PSNR against the prefix's low-pass target) and PSNR against training images seen.

Run: `python benchmarks/summarize_recipes.py [RUNS/recipes] [--batch_size 32]` after the recipe script.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table  # noqa: E402

RECIPES = {  # label -> run folders in training order (c: stage 1, then stage 2)
    "(a) linear head, 1 stage": ["a-linear"],
    "(b) pixel decoder, 1 stage": ["b-pixel"],
    "(c) pixel decoder, TiTok's 2 stages": ["c-stage1", "c-stage2"],
}


def evaluations(folder: Path) -> dict[int, dict]:
    """Step -> the evaluation JSON of `folder` (eval-STEP.json; eval-final-fid.json under the key -1)."""
    found = {}
    for path in folder.glob("eval-*.json"):
        match = re.fullmatch(r"eval-(\d+|final-fid)\.json", path.name)
        if match:
            found[-1 if match[1] == "final-fid" else int(match[1])] = json.loads(path.read_text())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="?", default="runs/recipes")
    parser.add_argument("--batch_size", type=int, default=32, help="the recipes' training batch size")
    args = parser.parse_args()
    root = Path(args.recipes)
    final_rows, curve_rows, prefix_rows = [], [], []
    prefixes: list[int] = []
    for label, folders in RECIPES.items():
        seen, last = 0, None
        for index, name in enumerate(folders):
            runs = evaluations(root / name)
            steps = sorted(step for step in runs if step > 0)
            for step in steps:
                stage = f" (stage {index + 1})" if len(folders) > 1 else ""
                curve_rows.append([label + stage, f"{(seen + step) * args.batch_size:,}",
                                   f"{runs[step]['psnr']:.2f}", f"{runs[step]['ssim']:.3f}"])
            if steps:
                seen += steps[-1]
                last = runs
        if last is None:
            continue
        final = last.get(-1) or last[max(step for step in last if step > 0)]
        rfid = final.get("rfid")
        final_rows.append([label, f"{seen * args.batch_size:,}", f"{final['psnr']:.2f}", f"{final['ssim']:.3f}",
                           "-" if rfid is None else f"{rfid:.1f}"])
        prefixes = [entry["num_tokens"] for entry in final["prefixes"]]
        prefix_rows.append([label, *(f"{entry['psnr_target']:.1f}" for entry in final["prefixes"])])
    print("### Final tokenizers (1,000 Fashion-MNIST test images)\n")
    print(markdown_table(["recipe", "training images seen", "PSNR dB", "SSIM", "rFID"], final_rows))
    print("\n### PSNR of prefix k against its low-pass target lowpass(x, omega_k), dB\n")
    print(markdown_table(["recipe", *(f"k={k}" for k in prefixes)], prefix_rows))
    print("\n### Full-prefix PSNR against training images seen\n")
    print(markdown_table(["recipe", "images seen", "PSNR dB", "SSIM"], curve_rows))


if __name__ == "__main__":
    main()
