"""`homepot broker`: getting the brokers ready for the fleet."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from homepot.cli.common import JsonOption, fail, settings_from, stdout_console, with_engine
from homepot.fleet.prepare import BrokerNotReady, PreparedBrokers, prepare_brokers

broker_app = typer.Typer(
    help="The MQTT broker or NATS cluster the terminals connect to.", no_args_is_help=True
)


@broker_app.command("prepare")
def broker_prepare(
    ctx: typer.Context,
    wait: Annotated[
        float,
        typer.Option(help="Seconds to wait for NATS to create its MQTT stream.", min=1),
    ] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Write every device's broker account from the database (the files HOMEPOT keeps) and,
    with HOMEPOT_FLEET__UPLINK=jetstream, create the consumer the server processes share,
    so that a new cluster keeps the terminals' messages before any server process runs."""
    settings = settings_from(ctx)
    try:
        prepared = with_engine(
            settings, lambda engine: prepare_brokers(settings, engine, wait_seconds=wait)
        )
    except BrokerNotReady as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(_as_dict(prepared), indent=2))
        return
    console = stdout_console()
    if prepared.account_files:
        console.print(
            f"{prepared.device_accounts} device account(s) written to "
            + ", ".join(prepared.account_files)
        )
    else:
        console.print(
            "no broker account files kept by HOMEPOT (HOMEPOT_FLEET__MQTT_PASSWORD_FILE, "
            "HOMEPOT_FLEET__NATS_AUTH_FILE): nothing written"
        )
    consumer = prepared.consumer
    if consumer is None:
        console.print("uplink: mqtt (no JetStream consumer to create)")
        return
    settings_note = "" if consumer.settings_applied else " (kept with its own settings)"
    console.print(
        f"JetStream consumer {consumer.name} ready{settings_note}: "
        f"{consumer.waiting} message(s) waiting, {consumer.unacknowledged} unacknowledged"
    )


def _as_dict(prepared: PreparedBrokers) -> dict[str, object]:
    consumer = prepared.consumer
    return {
        "account_files": list(prepared.account_files),
        "device_accounts": prepared.device_accounts,
        "consumer": None
        if consumer is None
        else {
            "name": consumer.name,
            "settings_applied": consumer.settings_applied,
            "waiting": consumer.waiting,
            "unacknowledged": consumer.unacknowledged,
        },
    }
