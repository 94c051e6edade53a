"""Write src/filterviz/data/probe_photos.npz: the natural photos that decide whether a unit is dead.

Eleven photos that scikit-image ships under public-domain or CC0 terms (astronaut, rocket: public
domain; chelsea, coffee, camera, clock: CC0 or released to the public domain by their photographers;
retina: CC0; hubble_deep_field: NASA, public domain; brick, grass, gravel: CC0 Textures), each
centre-cropped to a square and resized to 128 px, stored as uint8 RGB (gray ones repeated).

    python tools/make_probe_photos.py
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "clock", "retina", "hubble_deep_field", "brick",
         "grass", "gravel")
SIDE = 128


def square(array: np.ndarray) -> np.ndarray:
    image = Image.fromarray(array).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((SIDE, SIDE), Image.LANCZOS))


def main() -> None:
    photos = np.stack([square(getattr(data, name)()) for name in NAMES])
    target = Path(__file__).resolve().parents[1] / "src" / "filterviz" / "data" / "probe_photos.npz"
    np.savez_compressed(target, photos=photos, names=np.array(NAMES))
    print(f"wrote {target} ({target.stat().st_size} bytes, {photos.shape})")


if __name__ == "__main__":
    main()
