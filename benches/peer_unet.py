"""PyTorch+diffusers side of the UNet benchmark (benches/unet.rs): a UNet2DModel built from
the same config.json as ours, torch with RAYON_NUM_THREADS (default 2) threads, batch 64.

    python benches/peer_unet.py models/mnist/config.json train 7
    python benches/peer_unet.py models/mnist/config.json forward 8

`train`: the step of ../shared/bench/peer_bench.py section c (t, eps, closed-form x_t, MSE
on eps, backward, AdamW) after 2 warm-up steps. `forward`: no-grad forward passes. Each mode
runs in its own process so its peak RSS is its own. Prints one JSON object: median seconds,
images/s and the process's peak RSS in MiB (getrusage ru_maxrss).
"""
import json, os, resource, statistics, sys, time
import torch
from diffusers import UNet2DModel

torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
cfg = json.load(open(sys.argv[1]))
mode, n = sys.argv[2], int(sys.argv[3])
model = UNet2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
b, size = 64, cfg["sample_size"]
torch.manual_seed(0)
x0 = torch.randn(b, cfg["in_channels"], size, size)
if mode == "train":
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)

    def run():
        t = torch.randint(0, 1000, (b,))
        eps = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(model(xt, t).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
else:
    model.eval()
    t = torch.full((b,), 500, dtype=torch.long)

    def run():
        with torch.no_grad():
            return model(x0, t).sample

for _ in range(2):
    run()
per = []
for _ in range(n):
    t0 = time.perf_counter()
    run()
    per.append(time.perf_counter() - t0)
med = statistics.median(per)
print(json.dumps({"mode": mode, "median_s": med, "images_per_s": b / med,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
