"""Identity of a base model: a hash of its config and a fingerprint of its weights.

``weights_fingerprint``: sha256 over, for every parameter and buffer in name order, its name, shape and
dtype and a strided sample of at most :data:`SAMPLES` of its values (every ``numel // SAMPLES``-th element
of the flattened tensor, as float64 bytes). Cheap on a 7B model (~300 tensors x 64 values, no full
pass over the weights) and different for any retrained, re-initialised or re-shaped tensor in practice.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

SAMPLES = 64
VOLATILE_CONFIG_KEYS = ("transformers_version", "dtype", "torch_dtype")


def weights_fingerprint(model: nn.Module) -> str:
    """``sha256:<hex>`` of the names, shapes, dtypes and strided value samples of ``model``'s tensors."""
    digest = hashlib.sha256()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel() and t.device.type != "meta":
            flat = t.reshape(-1)
            sample = flat[:: max(1, flat.numel() // SAMPLES)][:SAMPLES]
            digest.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def config_hash(model: nn.Module) -> str | None:
    """``sha256:<hex>`` of the model's ``config`` (transformers ``to_dict``) without paths (keys starting with
    ``_``) and versions; None for a model without one."""
    config: Any = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    data = {
        k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in VOLATILE_CONFIG_KEYS
    }
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
