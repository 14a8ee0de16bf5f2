"""MeTAH model: backbones, hash head, losses, training, evaluation and TorchScript export.

Never imports ``service`` or ``index``. Conventions used throughout:

* a *code* is a float tensor of ``-1.0``/``+1.0`` values, ``[N, bits]``; bit ``i`` is ``code[:, i] > 0``;
* images enter networks as float32 ``[N, 3, H, W]`` RGB in ``[0, 1]``; normalisation happens inside the network.
"""
