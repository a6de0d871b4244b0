"""The local S3 the object-storage tests run on: pyarrow reaches it through the environment alone,
and an outage (SIGSTOP) keeps its data."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
from s3_server import S3Server, s3_server  # noqa: F401 (the fixture)


def test_pyarrow_reaches_it_through_the_environment_and_survives_a_pause(s3_server):  # noqa: F811
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint and s3_server.endpoint.startswith("http://127.0.0.1:")
    fs, root = pafs.FileSystem.from_uri(f"s3://{s3_server.bucket}/lnsub")
    with fs.open_output_stream(f"{root}/cells/a/mask.bin") as f:
        f.write(b"mask")
    assert s3_server.list("lnsub/") == ["lnsub/cells/a/mask.bin"]

    s3_server.pause()
    assert s3_server.running  # stopped, not gone
    s3_server.resume()
    with fs.open_input_stream(f"{root}/cells/a/mask.bin") as f:
        assert f.read() == b"mask"

    proc = s3_server.proc
    s3_server.stop()
    assert proc.poll() is not None and not s3_server.running


def test_stop_ends_a_paused_server_and_the_context_manager_always_stops():
    with S3Server(bucket="other") as server:
        assert server.list() == []
        server.pause()
        proc = server.proc
    assert proc.poll() is not None
