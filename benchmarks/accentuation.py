"""Renders from a photo, measured: caricatures at several powers, feature accentuation at several
closeness weights, and how close MACO's first image (the photo's phase) is to the photo.

Every number is measured again here on the final pixels with the model itself (not read from the
render's own scores). Photo: scikit-image's cat (chelsea), and its astronaut for MACO. fp32 on the
CPU. Writes benchmarks/results/accentuation.md.

    python benchmarks/accentuation.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

import filterviz
from filterviz.params import MacoParameterization
from filterviz.starts import load_photo

RESULTS = Path(__file__).parent / "results" / "accentuation.md"


def activations(model: filterviz.LoadedModel, pixels: np.ndarray, layer: str) -> torch.Tensor:
    with torch.no_grad():
        return model.activations(torch.as_tensor(pixels[None]).permute(0, 3, 1, 2).float(), layer).flatten()


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    photos = {name: folder / f"{name}.png" for name in ("chelsea", "astronaut")}
    for name, path in photos.items():
        Image.fromarray(getattr(data, name)()).save(path)
    model = filterviz.load_model("efficientnet-lite0", device="cpu")
    lines = ["# Renders from a photo", "", "`python benchmarks/accentuation.py`; EfficientNet-Lite0, fp32, CPU.", ""]

    lines += ["## Caricature of blocks.5 (classic, 128 px, 40 steps, the cat)", "",
              "| power | projection a.p/p.p | cosine | pixel RMS change | seconds |", "|---|---|---|---|---|"]
    photo = load_photo(photos["chelsea"], 128)
    p = activations(model, photo, "blocks.5")
    for power in (0, 1, 2, 4):
        start = time.perf_counter()
        result = filterviz.render(model, [f"caricature:blocks.5:{power}"], start=str(photos["chelsea"]), size=128,
                                  seed=0, precision="fp32")
        seconds = time.perf_counter() - start
        a = activations(model, result.pixels[0], "blocks.5")
        cosine = float(a @ p / (a.norm() * p.norm()))
        change = float(np.sqrt(((result.pixels[0] - photo) ** 2).mean()))
        lines.append(f"| {power} | {float(a @ p / (p @ p)):.2f} | {cosine:.3f} | {change:.1f} | {seconds:.0f} |")

    lines += ["", "## Accentuation of class 207 (golden retriever) in the cat (lucid, 128 px, 64 steps)", "",
              "| objective | log p(207) | -close:blocks.2 | pixel RMS from the photo |", "|---|---|---|---|"]
    objectives = ["logprob:207", "logprob:207 + 10*close:blocks.2", "logprob:207 + 100*close:blocks.2",
                  "logprob:207 + 1000*close:blocks.2", "logprob:207 + 1000*close:pixels"]
    result = filterviz.render(model, objectives, "lucid", start=str(photos["chelsea"]), steps=64, size=128, seed=0,
                              precision="fp32")
    near = activations(model, photo, "blocks.2")

    def log_probability(pixels: np.ndarray) -> float:
        with torch.no_grad():
            logits = model.logits(torch.as_tensor(pixels[None]).permute(0, 3, 1, 2).float())
        return float(torch.log_softmax(logits, 1)[0, 207])

    lines.append(f"| (the photo) | {log_probability(photo):.2f} | 0 | 0 |")
    for objective, pixels in zip(objectives, result.pixels):
        a = activations(model, pixels, "blocks.2")
        distance = float(((a - near) ** 2).sum() / (near ** 2).sum())
        change = float(np.sqrt(((pixels - photo) ** 2).mean()))
        lines.append(f"| `{objective}` | {log_probability(pixels):.3f} | {distance:.3f} | {change:.1f} |")

    lines += ["", "## MACO's first image from a photo's phase: pixel correlation with the photo", "",
              "| photo | side | photo's phase | a random phase |", "|---|---|---|---|"]
    for name, path in photos.items():
        for side in (64, 160):
            photo = load_photo(path, side)
            first = MacoParameterization().create(side, [0], 0, photo[None])().detach().permute(0, 2, 3, 1).numpy()[0]
            noise = MacoParameterization().create(side, [0], 0, None)().detach().permute(0, 2, 3, 1).numpy()[0]
            lines.append(f"| {name} | {side} | {np.corrcoef(first.ravel(), photo.ravel())[0, 1]:.2f} | "
                         f"{np.corrcoef(noise.ravel(), photo.ravel())[0, 1]:.2f} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
