"""BitFit: its registry entry (no layer: it unfreezes biases)."""
