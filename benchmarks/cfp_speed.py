"""Speed of the phantom and of measure_fundus on one core; prints JSON.

Run as: python benchmarks/cfp_speed.py [--repeats 7] [--profile]

Thread pools (OpenMP, OpenBLAS, MKL, numba) are pinned to one thread before numpy is imported, so the
figures are single-core. Images: a 1024 x 1024 phantom (diabetic retinopathy, with lesions), the same
at 2048 x 2048 (analysed at the 1024-px working resolution, results in original pixels), and
skimage.data.retina() (1411 x 1411). For each: the median and minimum wall time and the median CPU
time (``time.process_time``) of ``--repeats`` runs after a warm-up run (numba compilation, imports).
On a shared machine the wall time includes waiting for a core; the CPU time of a single-threaded
process does not, so it is the better estimate of the time on an idle core (the load average is
printed with the figures). ``stages_cpu_s`` is the median CPU time of each stage of measure_fundus
(``extras["timing_cpu_s"]``) for the 1024-px phantom; ``--profile`` adds the top functions (by own CPU
time) of a cProfile run of that image.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import json
import sys
import time

import numpy as np


def _time(fn, repeats: int) -> tuple[dict, list]:
    fn()  # warm-up (numba compile cache, imports)
    wall, cpu, outs = [], [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        outs.append(fn())
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"median_wall_s": float(np.median(wall)), "min_wall_s": float(min(wall)),
            "median_cpu_s": float(np.median(cpu)), "runs": len(wall)}, outs


def _profile(fn, top: int = 25) -> list[dict]:
    import cProfile
    import pstats

    pr = cProfile.Profile(time.process_time)  # CPU time: waiting for a busy core is not counted
    pr.enable()
    fn()
    pr.disable()
    st = pstats.Stats(pr)
    rows = []
    for (path, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append({"function": f"{os.path.basename(path)}:{line}({name})", "calls": nc,
                     "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="add a cProfile top list for the 1024-px phantom")
    args = ap.parse_args(argv)
    from skimage import data

    from grok.cfp import measure_fundus
    from grok.phantom.cfp import synth_fundus

    ph = synth_fundus("diabetic_retinopathy", "OD", np.random.default_rng(0), size=1024)
    big = np.repeat(np.repeat(ph.image, 2, axis=0), 2, axis=1)
    retina = data.retina()
    load_before = os.getloadavg()[0]
    m1024, outs = _time(lambda: measure_fundus(ph.image), args.repeats)
    stages = {k: float(np.median([o.extras["timing_cpu_s"][k] for o in outs]))
              for k in outs[0].extras["timing_cpu_s"]}
    out = {
        "threads": 1,
        "load_average_1min_before": load_before,
        "cpu_count": os.cpu_count(),
        "measure_phantom_1024": m1024,
        "stages_cpu_s": stages,
        "measure_phantom_2048": _time(lambda: measure_fundus(big), args.repeats)[0],
        "measure_skimage_retina_1411": _time(lambda: measure_fundus(retina), args.repeats)[0],
        "phantom_synth_1024": _time(lambda: synth_fundus("diabetic_retinopathy", "OD",
                                                         np.random.default_rng(1), size=1024), args.repeats)[0],
        "load_average_1min_after": os.getloadavg()[0],
        "target_s_per_1024_image": 2.0,
    }
    if args.profile:
        out["profile_phantom_1024"] = _profile(lambda: measure_fundus(ph.image))
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
