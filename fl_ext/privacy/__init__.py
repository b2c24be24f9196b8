"""Differential privacy: accountants, calibration, client-level Gaussian mechanism, the ledger."""

from fl_ext.privacy.accountants import ACCOUNTANTS, GaussianSteps, compute_epsilon
from fl_ext.privacy.calibration import UnreachableBudget, calibrate_noise_multiplier
from fl_ext.privacy.client_level import AdaptiveClipping, ClientLevelGaussian, noise_to_signal
from fl_ext.privacy.ledger import BudgetExceeded, PrivacyLedger

__all__ = [
    "ACCOUNTANTS",
    "AdaptiveClipping",
    "BudgetExceeded",
    "ClientLevelGaussian",
    "GaussianSteps",
    "PrivacyLedger",
    "UnreachableBudget",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "noise_to_signal",
]
