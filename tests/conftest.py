"""Shared fixtures: the real third-party tables and images in ../shared/data."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real metadata and pixels (see its README); the tests need it."""
    if not SHARED_DATA.exists():
        pytest.fail(f"real test data not found at {SHARED_DATA}; clone next to shared/")
    return SHARED_DATA


@pytest.fixture(scope="session")
def benchmark_module():
    """``load(name)`` -> the module ``benchmarks/<name>.py`` (tests use the benchmarks' own helpers)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module      # dataclasses look their module up while being defined
        spec.loader.exec_module(module)
        return module
    return load


@contextlib.contextmanager
def moto_s3(bucket: str):
    """A real S3-compatible server (moto in server mode) on a free loopback port with ``bucket``
    created; yields the s3fs/fsspec ``storage_options`` that reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "us-east-1"}}
        boto3.client("s3", endpoint_url=options["endpoint_url"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        yield options
    finally:
        server.stop()
