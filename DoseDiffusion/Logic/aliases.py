"""Structure names → roles through the editable alias table ``Resources/structure_aliases.json``
(:mod:`dosediffusion.roles` applies it, after the user's own choices)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dosediffusion.errors import InputError
from dosediffusion.resources import resource_path

_DOSE_IN_NAME = re.compile(r"(\d+(?:[.,p]\d+)?)")


def normalise(name: str) -> str:
    """Lower case without spaces, '_' and '-' ('Spinal Cord' → 'spinalcord')."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


@dataclass(frozen=True)
class RoleMatch:
    """How one structure name was classified."""

    role: str  # ptv, oar, body, other
    canonical: str | None = None
    prescription_gy: float | None = None
    ignored: bool = False  # a helper structure (ring, optimisation) on purpose without a role


class AliasTable:
    """Matches structure names to roles (see the JSON file's ``_doc`` for the rules)."""

    def __init__(self, table: dict, source: str = "alias table"):
        try:
            self._exact: dict[str, tuple[str, str]] = {}
            for role in ("body", "oar"):
                for canonical, aliases in table[role].items():
                    for alias in [canonical, *aliases]:
                        self._exact[normalise(alias)] = (role, canonical)
            self._ptv = [re.compile(p) for p in table["ptv"]]
            self._ignore = [re.compile(p) for p in table.get("ignore", [])]
        except (KeyError, AttributeError, TypeError, re.error) as error:
            raise InputError(f"malformed alias table ({error!r}); it needs 'body', 'oar' and 'ptv' entries", source) from None

    @classmethod
    def load(cls, path: str | Path | None = None) -> AliasTable:
        """The table at ``path``, or the shipped one."""
        path = Path(path) if path else resource_path("structure_aliases.json")
        try:
            return cls(json.loads(path.read_text()), str(path))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"cannot read alias table: {error}", path) from None

    def match(self, name: str) -> RoleMatch:
        """The role of ``name``; PTVs carry the dose found in the name (Gy) when there is one."""
        key = normalise(name)
        if key in self._exact:
            role, canonical = self._exact[key]
            return RoleMatch(role, canonical)
        lower = name.strip().lower()
        if any(p.search(lower) for p in self._ptv):
            return RoleMatch("ptv", prescription_gy=dose_from_name(lower))
        if any(p.search(lower) for p in self._ignore):
            return RoleMatch("other", ignored=True)
        return RoleMatch("other")


@lru_cache(maxsize=1)
def default_table() -> AliasTable:
    return AliasTable.load()


def dose_from_name(name: str) -> float | None:
    """Dose in Gy written in a structure name: 'PTV70' → 70, 'PTV_7000' (cGy) → 70,
    'PTV5940' → 59.4, 'PTV_59.4Gy' → 59.4; None when no plausible dose (5-150 Gy) is there."""
    for token in _DOSE_IN_NAME.findall(name):
        value = float(token.replace(",", ".").replace("p", "."))
        if "." not in token and "," not in token and "p" not in token and value >= 200:
            value /= 100.0  # cGy
        if 5.0 <= value <= 150.0:
            return value
    return None
