"""The modalities (sensors) of the project, in the one order used everywhere: subset order and keys, the ``present``
columns of a data set, the manifest's lists, the sensor rigs of the simulated world and the demo (docs/formats.md,
"Modalities and classes"). Imports nothing, so every layer (core, data, training, sim, ros) can use it."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

#: Modality names in canonical order.
MODALITIES = ("camera", "lidar", "reflectance")


def subset_key(modalities: Iterable[str], order: Optional[Sequence[str]] = None) -> str:
    """Key of a modality subset: its names joined with ``+`` (e.g. ``"camera+lidar"``), the key of the bundle's
    subset encoders, chains and per-subset training figures (docs/formats.md).

    Args:
        modalities: the subset's names.
        order: the bundle's (or training run's) modality order; the names are put in this order. None: the names are
            already in that order (e.g. a subset built by ``itertools.combinations`` over it) and are joined as given.

    Raises:
        KeyError: a name that is not in ``order``.
        ValueError: a name given twice (``order`` None).
    """
    if order is None:
        names = tuple(modalities)
        if len(set(names)) != len(names):
            raise ValueError(f"subset {list(names)} names a modality twice")
        return "+".join(names)
    mods = set(modalities)
    unknown = mods.difference(order)
    if unknown:
        raise KeyError(f"unknown modalities {sorted(unknown)}; bundle has {list(order)}")
    return "+".join(m for m in order if m in mods)
