"""The network, its backbones, the typed model card and the verified weights that travel with it."""
