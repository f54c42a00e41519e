# The tutorial's full training run in PyTorch on CPU, timed: the wall-clock figure to set beside
# `cae train` on the same machine. Same model and init as ../shared/reference/make_reference.py,
# pixels scaled to [-1, 1], MSE, Adam lr 1e-3, batch 64, no shuffling, validation on the test
# images after every epoch.
#
# Usage: python bench/torch_train.py --data-dir DIR [--epochs 10] [--batch-size 64]
#            [--threads 2] [--latent 200] [--compile]
# DIR holds train/<class>/*.jpg and test/<class>/*.jpg (the shared CIFAR-10 JPEG copy).
# All images are decoded into one tensor before the clock for training starts (PyTorch's most
# favourable case: no DataLoader work during the epochs); the load time is printed separately.
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

here = os.path.dirname(os.path.abspath(__file__))
shared = os.environ.get("CAE_SHARED", os.path.join(here, "..", "..", "shared"))
sys.path.insert(0, os.path.join(shared, "reference"))
from make_reference import Autoencoder, seed_init  # noqa: E402


def load_split(folder):
    """Every image of `folder`/<class>/*.jpg, classes and files in sorted order, as [-1, 1]."""
    pixels = []
    for name in sorted(os.listdir(folder)):
        class_dir = os.path.join(folder, name)
        if not os.path.isdir(class_dir):
            continue
        for file in sorted(os.listdir(class_dir)):
            if file.endswith(".jpg"):
                with Image.open(os.path.join(class_dir, file)) as image:
                    pixels.append(np.asarray(image.convert("RGB")))
    if not pixels:
        sys.exit(f"no .jpg images under {folder}/<class>/")
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(255.0)
    return x.sub(0.5).div(0.5).contiguous()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent", type=int, default=200)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    start = time.perf_counter()
    train = load_split(os.path.join(a.data_dir, "train"))
    test = load_split(os.path.join(a.data_dir, "test"))
    loaded = time.perf_counter()
    print(f"[torch] loaded {len(train)} train / {len(test)} test images in {loaded - start:.1f} s",
          flush=True)

    model = Autoencoder(a.latent)
    model.apply(seed_init)
    run = torch.compile(model) if a.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.MSELoss()
    tag = "compiled" if a.compile else "eager"
    print("epoch,train_loss,val_loss,seconds,images_per_second", flush=True)
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        losses = []
        for i in range(0, len(train), a.batch_size):
            batch = train[i:i + a.batch_size]
            loss = criterion(run(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        trained = time.perf_counter()
        model.eval()
        squared = 0.0
        with torch.no_grad():
            for i in range(0, len(test), 256):
                batch = test[i:i + 256]
                squared += (run(batch) - batch).pow(2).sum().item()
        seconds = time.perf_counter() - t0
        rate = len(train) / (trained - t0)
        print(f"{epoch},{np.mean(losses):.6f},{squared / test.numel():.6f},{seconds:.1f},{rate:.0f}",
              flush=True)
    end = time.perf_counter()
    print(f"[{tag}] {a.epochs} epochs: {end - loaded:.0f} s training and validation, "
          f"{end - start:.0f} s with loading", flush=True)


if __name__ == "__main__":
    main()
