"""PyTorch + diffusers on the GPU, beside `diffuse` in scripts/gpu-check.sh: a UNet2DModel
built from the same config.json, the train step of ../shared/bench/peer_bench.py section c
(t, eps, closed-form x_t, MSE on eps, backward, AdamW) and DDIM-50 sampling with diffusers'
DDIMScheduler, eager and (where it works) torch.compile'd.

    python scripts/gpu_peer.py CONFIG.json BATCH TRAIN_STEPS SAMPLE_N [compile]

PEER_TF32=0 turns TF32 off for convolutions too (PyTorch's default runs cuDNN convolutions on
TF32 tensor cores and matmuls in full f32): the like-for-like comparison with our f32 default.

Prints one JSON line: train images/s (median over steps after 3 warm-ups, CUDA-synchronised)
and DDIM-50 seconds and images/s for SAMPLE_N images in one batch.
"""
import json, os, statistics, sys, time
import torch
from diffusers import UNet2DModel, DDIMScheduler

cfg_path, b, steps, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
compiled = len(sys.argv) > 5 and sys.argv[5] == "compile"
dev = torch.device("cuda")
tf32 = os.environ.get("PEER_TF32", "default")
if tf32 == "0":
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
cfg = {k: v for k, v in json.load(open(cfg_path)).items() if not k.startswith("_")}
model = UNet2DModel(**cfg).to(dev)
fwd = torch.compile(model) if compiled else model
size, ch = cfg["sample_size"], cfg["in_channels"]
torch.manual_seed(0)
x0 = torch.randn(b, ch, size, size, device=dev)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, device=dev), 0)


def step():
    t = torch.randint(0, 1000, (b,), device=dev)
    eps = torch.randn_like(x0)
    a = abar[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    loss = torch.nn.functional.mse_loss(fwd(xt, t).sample, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


model.train()
for _ in range(3):
    step()
torch.cuda.synchronize()
per = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    per.append(time.perf_counter() - t0)
train_ips = b / statistics.median(per)

model.eval()
sched = DDIMScheduler()


def sample():
    sched.set_timesteps(50)
    x = torch.randn(n, ch, size, size, device=dev)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(fwd(x, t).sample, t, x).prev_sample
    torch.cuda.synchronize()


s = float("nan")
if n > 0:  # SAMPLE_N 0: the train step alone (the profiler's run)
    sample()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        sample()
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
print(json.dumps({"config": cfg_path, "batch": b, "compiled": compiled, "tf32": tf32,
                  "train_images_per_s": round(train_ips, 1),
                  "ddim50_s": round(s, 3), "ddim50_images_per_s": round(n / s, 1) if n else None,
                  "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}), flush=True)
