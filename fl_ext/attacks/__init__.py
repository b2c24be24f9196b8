"""Simulated Byzantine attacks.

Omniscient attacks craft updates from the honest updates (server side, simulation only);
data attacks (label flipping) and malformed replies run on the clients themselves.
"""

from fl_ext.attacks.base import OmniscientAttack
from fl_ext.attacks.client_side import CLIENT_ROLES, ROLE_KEY, flip_labels, malform
from fl_ext.attacks.omniscient import ALIE, IPM, GaussianNoise, Mimic, SignFlip
from fl_ext.attacks.optimized import LineSearch

__all__ = [
    "ALIE",
    "CLIENT_ROLES",
    "IPM",
    "ROLE_KEY",
    "GaussianNoise",
    "LineSearch",
    "Mimic",
    "OmniscientAttack",
    "SignFlip",
    "flip_labels",
    "malform",
]
