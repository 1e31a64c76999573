"""Models: single-device math only (no ray, deepspeed or torch.distributed imports here).

Their configs live in ``brainvlp.models.config`` (torch-free); the package itself imports nothing.

A vision backbone maps ``volume_BCDHW`` to a token map ``tokens_BPF`` (its last feature map, flattened: B
batch, C input channels (sequences), D/H/W volume axes, P spatial positions, F feature width) and exposes
``out_dim`` (F). Pooling and projection happen in the model that owns the backbone.
"""
