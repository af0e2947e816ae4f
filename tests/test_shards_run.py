"""The shard writers' own dask LocalCluster binds no fixed port (no "Port 8787 is already in use")."""

from __future__ import annotations

import socket
import warnings


def test_local_cluster_does_not_want_port_8787(tmp_path):
    from dask.distributed import Client

    from cytodata._cluster import local_cluster

    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 8787))  # someone's dashboard; if taken already, so much the better
        held.listen(1)
    except OSError:
        pass
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with local_cluster(1) as cluster, Client(cluster) as client:
                assert client.submit(sum, [1, 2]).result() == 3
                address = cluster.scheduler.http_server.port if cluster.scheduler.http_server else None
    finally:
        held.close()
    assert not [str(w.message) for w in caught if "8787" in str(w.message)]
    assert address != 8787
