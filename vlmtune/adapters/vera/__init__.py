"""VeRA (Kopiczko et al., ICLR 2024) and DVoRA (DoRA §5.4): layers, shared projection, registry entries."""

from vlmtune.adapters.vera.layer import (
    DVoraLinear,
    VeraLinear,
    VeraProjection,
    kaiming_uniform,
    shared_projection,
)

__all__ = ["DVoraLinear", "VeraLinear", "VeraProjection", "kaiming_uniform", "shared_projection"]
