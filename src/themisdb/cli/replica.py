"""``themisdb replica``: replication status, promotion of a follower, re-seeding a follower.

``status`` and ``promote`` ask the running server (admin token, TLS as configured); ``seed``
runs with the server stopped and talks to the leader over the replication channel.
"""

from __future__ import annotations

import json

import click

from themisdb.cli._common import admin_call, fail, settings
from themisdb.errors import EX_CONFIG, ConfigError, ReplicationError, StorageError
from themisdb.replication.seed import seed as seed_from_leader


@click.group()
def replica() -> None:
    """WAL replication: status, promote a follower, re-seed a follower."""


@replica.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_context
def replica_status(ctx: click.Context, as_json: bool) -> None:
    """Role, epoch and LSNs of this node; its lag as a follower; its followers as a leader."""
    document = admin_call(settings(ctx.obj["config"]), "GET", "/admin/replication")
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(
        f"{document['node_id']}: {document['role']} of epoch {document['epoch']}, "
        f"log {document['first_lsn']}..{document['last_lsn']}, {document['transport']}"
    )
    following = document.get("following")
    if following:
        click.echo(
            f"  following {following['leader'] or '-'}: {following['state']}, applied "
            f"{following['applied_lsn']} of {following['leader_lsn']}, lag "
            f"{following['lag_records']} records / {following['lag_seconds']} s"
            + (f" ({following['error']})" if following["error"] else "")
        )
    for follower in document["followers"]:
        click.echo(
            f"  follower {follower['follower_id']}: applied {follower['applied_lsn']}, lag "
            f"{follower['lag_records']} records / {follower['lag_seconds']} s"
            + ("" if follower["streaming"] else " (disconnected)")
        )


@replica.command("promote")
@click.pass_context
def replica_promote(ctx: click.Context) -> None:
    """Make this follower the leader of a new epoch. Other followers (whose
    THEMIS_REPLICATE_FROM lists this node) follow it; a stale leader is refused. Promote the
    follower with the highest applied LSN (see `replica status`): records only the old leader
    had are lost with it."""
    document = admin_call(settings(ctx.obj["config"]), "POST", "/admin/replication/promote")
    click.echo(f"{document['node_id']} now leads epoch {document['epoch']}")


@replica.command("seed")
@click.option("--force", is_flag=True, help="Move an existing database aside and replace it.")
@click.pass_context
def replica_seed(ctx: click.Context, force: bool) -> None:
    """Copy the leader's database into this (stopped) follower's data directory: a consistent
    snapshot over the replication channel, verified before it replaces anything."""
    config = settings(ctx.obj["config"])
    if config.role != "follower":
        fail("themisdb: replica seed is for followers (THEMIS_ROLE=follower)", EX_CONFIG)
    try:
        with click.progressbar(length=0, label="receiving snapshot", show_pos=True) as bar:
            done = seed_from_leader(config, force=force, progress=bar.update)
    except ConfigError as exc:
        fail(exc.render(), EX_CONFIG)
    except (ReplicationError, StorageError, OSError) as exc:
        fail(f"themisdb: replica seed failed: {exc}", 1)
    click.echo(
        f"seeded from {done.leader}: {done.size} bytes at LSN {done.lsn}, epoch {done.epoch}"
        + (f"; the old database is at {done.moved_aside}" if done.moved_aside else "")
        + ". Start the server: it follows from there."
    )
