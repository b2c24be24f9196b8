"""The ClientApp: builds an SgdClient from the node config and the server's ConfigRecord.

Clients never read conf/: the dataset, partition and model specs, and the dataset hash,
arrive in every train/evaluate message. ``partition-id`` and ``num-partitions`` come from the
node config (set by the simulation engine, or by ``--node-config`` on a SuperNode).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flwr.app import Context, Message
from torch import nn

from clients import SgdClient, numpy_client_app
from clients.stats import STATS_ACTION, stats_reply
from clients.submodel import SubModelTask, check_device_limit, submodel_for
from fl_ext.compat import MAX_WIDTH_KEY
from fl_ext.data.federated import ClientData, client_data
from fl_ext.data.normalize import NORMALIZE_KEY, Normalization
from fl_ext.models import ClassifierNet
from fl_ext.specs import build_from_spec, spec_from_json
from simulations.adapter_build import ADAPTER_KEY, client_adapted
from simulations.console import configure_console
from strategies.lora_ranks import RANK_KEY

configure_console()  # in the simulation's actor process too: one line per event


def node_data(context: Context, config: dict[str, Any]) -> ClientData:
    """The node's partition, normalised with the federation's statistics when sent."""
    data = client_data(
        dataset_spec_json=str(config["dataset-spec"]),
        partition_spec_json=str(config["partition-spec"]),
        partition_id=int(context.node_config["partition-id"]),
        num_partitions=int(context.node_config["num-partitions"]),
        local_test_fraction=float(config.get("local-test-fraction", 0.1)),
        expected_hash=str(config["dataset-hash"]) if "dataset-hash" in config else None,
    )
    if NORMALIZE_KEY not in config:
        return data
    norm = Normalization.from_json(str(config[NORMALIZE_KEY]))
    return replace(data, train=norm.apply(data.train), test=norm.apply(data.test))


def client_fn(context: Context, config: dict[str, Any]) -> SgdClient:
    """Build this node's client for one message."""
    partition_id = int(context.node_config["partition-id"])
    data = node_data(context, config)
    model: nn.Module = build_from_spec(
        spec_from_json(str(config["model-spec"])),
        ClassifierNet,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
    )
    if ADAPTER_KEY in config:  # a frozen backbone with LoRA adapters: only they travel
        model = client_adapted(model, str(config[ADAPTER_KEY]), rank=config.get(RANK_KEY))
    max_width = node_max_width(context)
    task = SubModelTask.from_config(config)
    make_forward = None
    if task is not None:
        check_device_limit(task, max_width)
        model, make_forward = submodel_for(model, data.input_shape, task)
    if config.get("dp-mode") == "dp_sgd":
        from clients.dp_sgd_client import DpSgdClient  # Opacus only where DP-SGD runs

        return DpSgdClient(
            state=context.state,
            model=model,
            train=data.train,
            test=data.test,
            partition_id=partition_id,
            data_hash=data.partition_hash,
        )
    return SgdClient(
        model=model,
        train=data.train,
        test=data.test,
        partition_id=partition_id,
        data_hash=data.partition_hash,
        make_forward=make_forward,
        max_width=max_width,
    )


def node_max_width(context: Context) -> float | None:
    """The widest sub-model this device holds (node config ``max-width``), None if not set."""
    value = context.node_config.get(MAX_WIDTH_KEY)
    if value is None:
        return None
    width = float(value)
    if not 0 < width <= 1:
        raise ValueError(f"node config {MAX_WIDTH_KEY} must be in (0, 1], got {value!r}")
    return width


app = numpy_client_app(client_fn)


@app.query(STATS_ACTION)
def _statistics(msg: Message, context: Context) -> Message:
    return stats_reply(msg, context, node_data)
