"""KvtierTier with the shared G4 tier on a real Valkey/Redis server: blocks one tier stores are
found and loaded, verified, by another tier (another vLLM instance) through the server; lookups
never block the scheduler (RETRY for one step, then HIT or MISS); tenants and models stay
apart; a dead server or an evicted value is a miss, never an exception or wrong bytes.

The server is started here on a free port (redis-server or valkey-server, or the binary named
by KVTIER_REDIS_SERVER). Without one the tests are skipped, unless KVTIER_REQUIRE_REDIS=1 (CI)
makes that a failure."""

import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from conftest import BLOCK, fill
from test_vllm_tier import KEYS, ReqContext, TransferJob, make_tier, poll, spec
from kvtier.vllm import LookupResult


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def send(port: int, *args: bytes) -> bytes:
    cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(cmd)
        return s.recv(1024)


@pytest.fixture
def server(tmp_path):
    binary = os.environ.get("KVTIER_REDIS_SERVER") or shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        if os.environ.get("KVTIER_REQUIRE_REDIS") == "1":
            pytest.fail("KVTIER_REQUIRE_REDIS=1 but no redis-server or valkey-server was found")
        pytest.skip("no redis-server or valkey-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not ping(port):
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def step_until_known(tier, key, req, timeout=10.0):
    """Looks `key` up once per scheduler step, as vLLM does, until it is not RETRY."""
    deadline = time.monotonic() + timeout
    while True:
        r = tier.lookup(key, ReqContext(req))
        if r is not LookupResult.RETRY:
            return r
        tier.on_schedule_end(type("Ctx", (), {"preempted_req_ids": ()})())
        assert time.monotonic() < deadline, "the lookup never resolved"
        time.sleep(0.002)


def g4_tier(primary, directory, port, **kw):
    return make_tier(primary, directory, g4_url=f"redis://127.0.0.1:{port}", **kw)


def test_a_block_stored_by_one_instance_is_loaded_by_another(server, tmp_path):
    a_buf = np.zeros((32, BLOCK), dtype=np.uint8)
    b_buf = np.zeros((32, BLOCK), dtype=np.uint8)
    pages = [fill(a_buf, i, seed=100 + i) for i in range(4)]
    a = g4_tier(a_buf, str(tmp_path / "a"), server)
    b = g4_tier(b_buf, str(tmp_path / "b"), server)
    try:
        a.submit_store(TransferJob(1, KEYS[:4], np.arange(4), False, ReqContext("w")))
        assert poll(a)[1].success
        assert a.metrics()["keys_stored_g4"] == 4
        # B's own SSD is empty: the first lookup asks the server (RETRY), the next steps answer
        assert b.lookup(KEYS[0], ReqContext("r")) is LookupResult.RETRY
        for key in KEYS[:4]:
            assert step_until_known(b, key, "r") is LookupResult.HIT
        assert step_until_known(b, KEYS[6], "r") is LookupResult.MISS
        b.submit_load(TransferJob(2, KEYS[:4], np.array([10, 11, 12, 13]), True, ReqContext("r")))
        result = poll(b)[2]
        assert result.success and result.transfer_bytes == 4 * BLOCK
        for i, page in enumerate(pages):
            assert b_buf[10 + i].tobytes() == page
        m = b.metrics()
        assert m["keys_loaded_g4"] == 4 and m["g4_get_hits"] == 4 and m["g4_get_rejected"] == 0
        b.on_request_finished(ReqContext("r"))
    finally:
        a.shutdown()
        b.shutdown()


def test_other_tenants_and_models_are_never_served(server, tmp_path):
    buf = np.zeros((32, BLOCK), dtype=np.uint8)
    fill(buf, 0, seed=7)
    a = g4_tier(buf, str(tmp_path / "a"), server, tenant_salt="tenant-a")
    other_tenant = g4_tier(np.zeros_like(buf), str(tmp_path / "b"), server, tenant_salt="tenant-b")
    other_model = g4_tier(np.zeros_like(buf), str(tmp_path / "c"), server, tenant_salt="tenant-a", spec=spec(model="org/model-b"))
    same = g4_tier(np.zeros_like(buf), str(tmp_path / "d"), server, tenant_salt="tenant-a")
    try:
        a.submit_store(TransferJob(1, KEYS[:1], np.arange(1), False, ReqContext("w")))
        assert poll(a)[1].success
        assert step_until_known(other_tenant, KEYS[0], "r") is LookupResult.MISS
        assert step_until_known(other_model, KEYS[0], "r") is LookupResult.MISS
        assert step_until_known(same, KEYS[0], "r") is LookupResult.HIT
    finally:
        for t in (a, other_tenant, other_model, same):
            t.shutdown()


def test_a_value_gone_after_the_lookup_fails_the_key_and_is_a_miss_after(server, tmp_path):
    a_buf = np.zeros((32, BLOCK), dtype=np.uint8)
    b_buf = np.full((32, BLOCK), 0xAB, dtype=np.uint8)
    fill(a_buf, 0, seed=1)
    page = fill(a_buf, 1, seed=2)
    a = g4_tier(a_buf, str(tmp_path / "a"), server)
    b = g4_tier(b_buf, str(tmp_path / "b"), server)
    try:
        a.submit_store(TransferJob(1, KEYS[:2], np.arange(2), False, ReqContext("w")))
        assert poll(a)[1].success
        for key in KEYS[:2]:
            assert step_until_known(b, key, "r") is LookupResult.HIT
        # the server evicts the first value between the lookup and the load
        assert send(server, b"FLUSHALL").startswith(b"+OK")
        a.submit_store(TransferJob(3, KEYS[1:2], np.array([1]), False, ReqContext("w")))
        poll(a)  # already on A's SSD: not sent again, so the server has nothing now
        b.submit_load(TransferJob(2, KEYS[:2], np.array([5, 6]), True, ReqContext("r")))
        result = poll(b)[2]
        assert not result.success
        assert not result.successful_keys  # neither value was there: nothing loaded
        assert b_buf[5].tobytes() != a_buf[0].tobytes() and b_buf[6].tobytes() != page
        assert b.lookup(KEYS[0], ReqContext("r")) is LookupResult.MISS
    finally:
        a.shutdown()
        b.shutdown()


def test_a_dead_server_is_a_miss_and_local_storage_still_works(tmp_path):
    buf = np.zeros((32, BLOCK), dtype=np.uint8)
    page = fill(buf, 0, seed=3)
    t = make_tier(buf, str(tmp_path / "a"), g4_url=f"redis://127.0.0.1:{free_port()}")
    try:
        assert step_until_known(t, KEYS[0], "r") is LookupResult.MISS
        t.submit_store(TransferJob(1, KEYS[:1], np.arange(1), False, ReqContext("w")))
        assert poll(t)[1].success
        assert t.lookup(KEYS[0], ReqContext("r2")) is LookupResult.HIT  # from its own SSD
        t.submit_load(TransferJob(2, KEYS[:1], np.array([9]), True, ReqContext("r2")))
        assert poll(t)[2].success and buf[9].tobytes() == page
        m = t.metrics()
        assert m["g4_up"] is False and m["g4_errors"] >= 1
    finally:
        t.shutdown()


def test_credentials_never_appear_in_errors(tmp_path):
    buf = np.zeros((32, BLOCK), dtype=np.uint8)
    with pytest.raises(Exception) as e:
        make_tier(buf, str(tmp_path / "a"), g4_url="http://user:hunter2@127.0.0.1:1")
    assert "hunter2" not in str(e.value)
