"""Modalities, attributes and object classes of the simulated worlds (docs/formats.md, "Modalities and classes").

Two worlds (``WORLDS``):

- ``"easy"`` (the paper-like setting, the module-level names below): 2 colours × 2 shapes × 2 materials = 8 classes,
  class id ``= 4*colour + 2*shape + material``;
- ``"hard"`` (the default for new data sets): 3 colours × 3 shapes × 3 materials = 27 classes with close neighbours,
  class id ``= 9*colour + 3*shape + material``.

In both, class id ``= (colour * n_shapes + shape) * n_materials + material`` with attribute ids the indices of the
value lists, and the class name is ``f"{colour}_{shape}_{material}"``. Pure Python (no numpy) so that any part may
import it.
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

from m2vae_fusion.core.modalities import MODALITIES  # noqa: F401  (re-exported; the one definition is there)

#: The paper's single-sensor setup: the attribute each modality alone determines (both worlds).
SENSOR_ATTRIBUTE: Dict[str, str] = {"camera": "colour", "lidar": "shape", "reflectance": "material"}

#: Attribute names in class-id order.
ATTRIBUTE_NAMES: Tuple[str, str, str] = ("colour", "shape", "material")


@dataclass(frozen=True)
class ClassSet:
    """The attribute values of one world; class id ``(c * len(shapes) + s) * len(materials) + m``."""

    colours: Tuple[str, ...]
    shapes: Tuple[str, ...]
    materials: Tuple[str, ...]

    @property
    def attributes(self) -> Dict[str, List[str]]:
        """Attribute name -> value names (index = attribute id), in the order colour, shape, material."""
        return {"colour": list(self.colours), "shape": list(self.shapes), "material": list(self.materials)}

    @property
    def num_classes(self) -> int:
        return len(self.colours) * len(self.shapes) * len(self.materials)

    def class_id(self, colour, shape, material) -> int:
        """Class id of an attribute triple; each argument is a value name (``"red"``) or an id.

        Raises:
            ValueError: an unknown name or an id out of range.
        """
        ids = []
        for value, names in ((colour, self.colours), (shape, self.shapes), (material, self.materials)):
            if isinstance(value, str):
                if value not in names:
                    raise ValueError(f"unknown attribute value {value!r} (expected one of {list(names)})")
                ids.append(names.index(value))
            else:
                if not 0 <= int(value) < len(names):
                    raise ValueError(f"attribute id {value!r} outside 0..{len(names) - 1}")
                ids.append(int(value))
        return (ids[0] * len(self.shapes) + ids[1]) * len(self.materials) + ids[2]

    def attributes_of(self, cid: int) -> Tuple[int, int, int]:
        """``(colour, shape, material)`` ids of class id ``cid``. Raises ValueError outside 0..num_classes-1."""
        cid = int(cid)
        if not 0 <= cid < self.num_classes:
            raise ValueError(f"class id {cid} outside 0..{self.num_classes - 1}")
        nm, ns = len(self.materials), len(self.shapes)
        return cid // (ns * nm), (cid // nm) % ns, cid % nm

    def class_name(self, colour, shape, material) -> str:
        """e.g. ``"red_cylinder_shiny"`` (names or ids accepted)."""
        c, s, m = self.attributes_of(self.class_id(colour, shape, material))
        return f"{self.colours[c]}_{self.shapes[s]}_{self.materials[m]}"

    @property
    def class_names(self) -> List[str]:
        """Class names, index = class id."""
        return [self.class_name(*self.attributes_of(k)) for k in range(self.num_classes)]

    def mapping(self) -> List[dict]:
        """The class ↔ attribute table written to ``metadata.json["classes"]``: one
        ``{"id", "name", "colour", "shape", "material"}`` per class (attribute ids)."""
        out = []
        for k, name in enumerate(self.class_names):
            c, s, m = self.attributes_of(k)
            out.append({"id": k, "name": name, "colour": c, "shape": s, "material": m})
        return out


WORLDS: Dict[str, ClassSet] = {
    "easy": ClassSet(("red", "green"), ("cylinder", "cube"), ("matte", "shiny")),
    "hard": ClassSet(("red", "orange", "yellow"), ("cylinder", "hexagonal_prism", "rounded_box"),
                     ("matte", "satin", "shiny")),
}
#: The world of a data set whose metadata names none (data sets written before the hard world existed).
LEGACY_WORLD = "easy"
#: The default world of new simulated data sets.
DEFAULT_WORLD = "hard"


def classes_of(world: str) -> ClassSet:
    """The :class:`ClassSet` of ``world`` (``"easy"`` or ``"hard"``). Raises ValueError otherwise."""
    try:
        return WORLDS[world]
    except KeyError:
        raise ValueError(f"unknown world {world!r} (expected one of {sorted(WORLDS)})") from None


def world_of_class_names(names) -> str:
    """The world whose class names equal ``names`` (a list), or ``""`` when none does."""
    for w, cs in WORLDS.items():
        if list(names or []) == cs.class_names:
            return w
    return ""


# ---------------------------------------------------------------------------------- the easy world (8 classes)
_EASY = WORLDS["easy"]
COLOURS: List[str] = list(_EASY.colours)
SHAPES: List[str] = list(_EASY.shapes)
MATERIALS: List[str] = list(_EASY.materials)

#: Attribute name -> value names (index = attribute id) of the easy world, in the order colour, shape, material.
ATTRIBUTES: Dict[str, List[str]] = _EASY.attributes


def class_id(colour, shape, material) -> int:
    """Easy-world class id ``4*colour + 2*shape + material``; names (``"red"``) or ids (0/1).

    Raises:
        ValueError: an unknown name or an id outside {0, 1}.
    """
    return _EASY.class_id(colour, shape, material)


def attributes_of(cid: int) -> Tuple[int, int, int]:
    """``(colour, shape, material)`` ids of easy-world class id ``cid`` (0..7). Raises ValueError otherwise."""
    return _EASY.attributes_of(cid)


def class_name(colour, shape, material) -> str:
    """e.g. ``class_name("red", "cylinder", "shiny") == "red_cylinder_shiny"`` (names or ids accepted)."""
    return _EASY.class_name(colour, shape, material)


#: The 8 easy-world class names, index = class id.
CLASS_NAMES: List[str] = _EASY.class_names
