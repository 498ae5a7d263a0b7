"""PyTorch+diffusers side of the sampling benchmark: DDIM-50 and DPM-Solver++-20 on a
UNet2DModel built from the same config.json, 64 samples, torch with 2 threads.

    python benches/peer_sample.py models/mnist/config.json
Prints one line per sampler: name, seconds (median of 3), images/s.
"""
import json, statistics, sys, time
import torch
from diffusers import UNet2DModel, DDIMScheduler, DPMSolverMultistepScheduler

torch.set_num_threads(2)
cfg = json.load(open(sys.argv[1]))
cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
model = UNet2DModel(**cfg).eval()
n = 64
shape = (n, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
for name, sched, steps in [("ddim-50", DDIMScheduler(), 50), ("dpm-solver++-20", DPMSolverMultistepScheduler(), 20)]:
    times = []
    for _ in range(3):
        sched.set_timesteps(steps)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(model(x, t).sample, t, x).prev_sample
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    print(f"{name} {s:.3f} {n / s:.2f}", flush=True)
