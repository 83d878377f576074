"""Speed of the phantom and of measure_fundus on one core; prints JSON.

Run as: python benchmarks/cfp_speed.py [--repeats 3]

Thread pools are pinned to one thread before numpy is imported, so the figures are single-core.
Images: a 1024 x 1024 phantom (diabetic retinopathy, with lesions), the same at 2048 x 2048 (analysed
at the 1024-px working resolution, results in original pixels), and skimage.data.retina() (1411 x 1411).
The load average is printed with the figures: on a shared machine they are upper bounds.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import sys
import time

import numpy as np


def _time(fn, repeats: int) -> dict:
    fn()  # warm-up (numba compile cache, imports)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"min_s": min(ts), "median_s": float(np.median(ts)), "runs": len(ts)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from skimage import data

    from grok.cfp import measure_fundus
    from grok.phantom.cfp import synth_fundus

    ph = synth_fundus("diabetic_retinopathy", "OD", np.random.default_rng(0), size=1024)
    big = np.repeat(np.repeat(ph.image, 2, axis=0), 2, axis=1)
    retina = data.retina()
    out = {
        "threads": 1,
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "phantom_synth_1024_s": _time(lambda: synth_fundus("diabetic_retinopathy", "OD",
                                                           np.random.default_rng(1), size=1024), args.repeats),
        "measure_phantom_1024_s": _time(lambda: measure_fundus(ph.image), args.repeats),
        "measure_phantom_2048_s": _time(lambda: measure_fundus(big), args.repeats),
        "measure_skimage_retina_1411_s": _time(lambda: measure_fundus(retina), args.repeats),
        "target_s_per_1024_image": 2.0,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
