"""Checks of the engine's own settings: a clear ValueError naming the value and the range."""

from __future__ import annotations


def check_settings(
    *,
    fraction_train: float,
    fraction_evaluate: float,
    min_train_nodes: int,
    min_evaluate_nodes: int,
    min_available_nodes: int,
    max_examples_per_client: int | None,
    weight_cap_factor: float | None,
    max_update_norm: float | None,
    node_wait_timeout: float,
    target_accuracy: float | None,
) -> None:
    """Reject impossible strategy settings with a message naming the value and the range."""
    check_range("fraction_train", fraction_train, 0.0, 1.0, low_open=True)
    if target_accuracy is not None:
        check_range("target_accuracy", target_accuracy, 0.0, 1.0, low_open=True)
    check_range("fraction_evaluate", fraction_evaluate, 0.0, 1.0)
    for name, value in (
        ("min_train_nodes", min_train_nodes),
        ("min_evaluate_nodes", min_evaluate_nodes),
        ("min_available_nodes", min_available_nodes),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if min_available_nodes < min_train_nodes:
        raise ValueError(
            f"min_available_nodes ({min_available_nodes}) must be >= min_train_nodes "
            f"({min_train_nodes})"
        )
    if max_examples_per_client is not None and max_examples_per_client < 1:
        raise ValueError(
            f"max_examples_per_client must be >= 1 or null, got {max_examples_per_client}"
        )
    if weight_cap_factor is not None and not weight_cap_factor >= 1:
        raise ValueError(f"weight_cap_factor must be >= 1 or null, got {weight_cap_factor}")
    if max_update_norm is not None and not max_update_norm > 0:
        raise ValueError(f"max_update_norm must be > 0 or null, got {max_update_norm}")
    if not node_wait_timeout > 0:
        raise ValueError(f"node_wait_timeout must be > 0, got {node_wait_timeout}")


def check_range(
    name: str, value: float, low: float, high: float, *, low_open: bool = False
) -> None:
    """ValueError unless ``value`` lies in the interval (open at ``low`` if ``low_open``)."""
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
