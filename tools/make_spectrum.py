"""Write src/filterviz/data/natural_spectrum.npz: the natural-photo magnitude spectrum MACO uses.

Estimated from the color photos that ship with scikit-image, with filterviz.params.estimate_spectrum:
    python tools/make_spectrum.py
"""

from __future__ import annotations

import numpy as np
import skimage.data

from filterviz.params import SPECTRUM_FILE, estimate_spectrum

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SIZE = 128
CROPS = 16


def main() -> None:
    images = [getattr(skimage.data, name)() for name in PHOTOS]
    magnitude = estimate_spectrum(images, size=SIZE, crops=CROPS, seed=0)
    SPECTRUM_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SPECTRUM_FILE, magnitude=magnitude.astype(np.float32), photos=np.array(PHOTOS))
    print(f"wrote {SPECTRUM_FILE} {magnitude.shape} from {', '.join(PHOTOS)}")


if __name__ == "__main__":
    main()
