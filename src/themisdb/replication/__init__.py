"""WAL replication over gRPC with mutual TLS: leader, followers, catch-up, failover."""

from themisdb.replication.leader import Pruner, Registry
from themisdb.replication.node import NodeHooks, ReplicationNode

__all__ = ["NodeHooks", "Pruner", "Registry", "ReplicationNode"]
