"""Modalities, attributes and the 8 object classes (docs/formats.md, "Modalities and classes").

Class id ``= 4*colour + 2*shape + material`` with attribute ids the indices below; class name
``f"{colour}_{shape}_{material}"``. Pure Python (no numpy) so that any part may import it.
"""
from typing import Dict, List, Tuple

#: Modalities, in this order everywhere (subset order, ``present`` columns, manifest lists).
MODALITIES: List[str] = ["camera", "lidar", "reflectance"]

COLOURS: List[str] = ["red", "green"]
SHAPES: List[str] = ["cylinder", "cube"]
MATERIALS: List[str] = ["matte", "shiny"]

#: Attribute name -> value names (index = attribute id), in the order colour, shape, material.
ATTRIBUTES: Dict[str, List[str]] = {"colour": COLOURS, "shape": SHAPES, "material": MATERIALS}

#: The paper's single-sensor setup: the attribute each modality alone determines.
SENSOR_ATTRIBUTE: Dict[str, str] = {"camera": "colour", "lidar": "shape", "reflectance": "material"}


def class_id(colour, shape, material) -> int:
    """Class id of an attribute triple; each argument is a name (``"red"``) or an id (0/1).

    Raises:
        ValueError: an unknown name or an id outside {0, 1}.
    """
    ids = []
    for value, names in ((colour, COLOURS), (shape, SHAPES), (material, MATERIALS)):
        if isinstance(value, str):
            if value not in names:
                raise ValueError(f"unknown attribute value {value!r} (expected one of {names})")
            ids.append(names.index(value))
        else:
            if int(value) not in (0, 1):
                raise ValueError(f"attribute id {value!r} outside 0..1")
            ids.append(int(value))
    return 4 * ids[0] + 2 * ids[1] + ids[2]


def attributes_of(cid: int) -> Tuple[int, int, int]:
    """``(colour, shape, material)`` ids of class id ``cid`` (0..7). Raises ValueError otherwise."""
    cid = int(cid)
    if not 0 <= cid < 8:
        raise ValueError(f"class id {cid} outside 0..7")
    return cid // 4, (cid // 2) % 2, cid % 2


def class_name(colour, shape, material) -> str:
    """e.g. ``class_name("red", "cylinder", "shiny") == "red_cylinder_shiny"`` (names or ids accepted)."""
    c, s, m = attributes_of(class_id(colour, shape, material))
    return f"{COLOURS[c]}_{SHAPES[s]}_{MATERIALS[m]}"


#: The 8 class names, index = class id.
CLASS_NAMES: List[str] = [class_name(*attributes_of(k)) for k in range(8)]
