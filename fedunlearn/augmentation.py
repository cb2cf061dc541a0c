"""Data augmentation of the clients' local batches after a forget request (docs/methods.md, "Augmentation").

A policy is one of torchvision's automatic augmentations, named in :data:`POLICIES`. Images
travel as float tensors (N, C, H, W); torchvision's policies need uint8, so each image is mapped
from its own [min, max] to 0..255, augmented, and mapped back (an image whose pixels are all equal
is left as it is). Every image draws its own operation. The draws come from a generator seeded by
the client's seed for the round, so a round is reproducible whichever actor runs it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import transforms

POLICIES: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
    "trivial-augment-wide": transforms.TrivialAugmentWide,
    "rand-augment": transforms.RandAugment,
    "auto-augment": transforms.AutoAugment,
}
"""Policy name -> torchvision transform. TrivialAugmentWide translates by up to 32 pixels whatever
the image size (most of an 8x8 digit); RandAugment scales its translation to the image."""


def augmenter(policy: str, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that augments a float image batch (N, C, H, W) with ``policy``, seeded by ``seed``.

    Parameters
    ----------
    policy
        A key of :data:`POLICIES`.
    seed
        Seeds the generator every draw comes from.
    """
    if policy not in POLICIES:
        raise ValueError(f"augment: unknown policy {policy!r}; choose among {sorted(POLICIES)}")
    transform = POLICIES[policy]()
    draws = torch.Generator().manual_seed(seed)

    def augment(batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() != 4:
            raise ValueError(f"augment: needs image batches (N, C, H, W), got shape {tuple(batch.shape)}")
        images = batch.detach().cpu()
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        span = images.amax(dim=(1, 2, 3), keepdim=True) - lo
        scale = torch.where(span > 0, span, torch.ones_like(span))
        as_bytes = ((images - lo) / scale * 255).round().to(torch.uint8)
        # torchvision draws from torch's global generator: run it on a seeded fork of that generator
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a CUDA seeding, costly per batch
            torch.default_generator.manual_seed(int(torch.randint(2**62, (1,), generator=draws)))
            out = torch.stack([transform(img) for img in as_bytes])
        back = out.to(images.dtype) / 255 * scale + lo
        return torch.where(span > 0, back, images).to(batch.device)

    return augment
