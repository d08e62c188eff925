"""The `discograph` command: deploy, migrate, and clear errors for bad configuration."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from chain.album import MINTER_ROLE, call_view
from chain.rpc import RpcClient
from discograph.demo import DEMO_CATALOG
from discograph.localchain import ANVIL_DEV_KEYS, Anvil
from tests.conftest import REPO_ROOT, head_revision

SERVICE_VARS = ("DATABASE_URL", "REDIS_URL", "RPC_URL", "RPC_WS_URL", "MINTER_PRIVATE_KEY")


async def discograph(
    *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    base["PYTHONPATH"] = str(REPO_ROOT)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "discograph.cli", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_deploy_deploys_grants_minter_and_records_the_contract(
    anvil: Anvil, database_url: str, tmp_path: Path
) -> None:
    minter = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    result = await discograph(
        "deploy",
        "--minter",
        minter.lower(),
        env={
            "RPC_URL": anvil.rpc_url,
            "DATABASE_URL": database_url,
            "MINTER_PRIVATE_KEY": ANVIL_DEV_KEYS[0],
        },
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert ANVIL_DEV_KEYS[0][2:] not in result.stdout + result.stderr
    address = result.stdout.split("ALBUM_CONTRACT=")[1].strip()
    async with RpcClient(anvil.rpc_url) as rpc:
        assert await rpc.call("eth_getCode", [address, "latest"]) not in ("0x", None)
        (granted,) = await call_view(
            rpc, address, "hasRole", bytes.fromhex(MINTER_ROLE[2:]), minter
        )
        assert granted is True
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT chain_id, address, kind, start_block FROM contracts")
    finally:
        await conn.close()
    assert row is not None
    assert (row["chain_id"], bytes(row["address"]).hex(), row["kind"]) == (
        31337,
        address[2:].lower(),
        "album",
    )
    assert row["start_block"] >= 1


async def test_deploy_refuses_a_chain_id_mismatch(
    anvil: Anvil, database_url: str, tmp_path: Path
) -> None:
    result = await discograph(
        "deploy",
        env={
            "RPC_URL": anvil.rpc_url,
            "DATABASE_URL": database_url,
            "MINTER_PRIVATE_KEY": ANVIL_DEV_KEYS[0],
            "CHAIN_ID": "1",
        },
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "CHAIN_ID" in result.stderr


async def test_deploy_without_rpc_url_says_what_to_set(tmp_path: Path) -> None:
    result = await discograph("deploy", env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "RPC_URL" in result.stderr
    assert "Traceback" not in result.stderr


async def test_migrate_command_migrates_a_configured_database(
    empty_database_url: str, tmp_path: Path
) -> None:
    result = await discograph("migrate", env={"DATABASE_URL": empty_database_url}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await conn.close()


async def test_migrate_without_database_url_uses_the_embedded_database(
    tmp_path: Path, service_dir: Path
) -> None:
    data = service_dir / "data"
    result = await discograph("migrate", env={"DATA_DIR": str(data)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "discograph to head" in result.stdout
    assert (data / "postgres" / "PG_VERSION").exists()


async def test_bad_setting_exits_2_naming_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CONFIRMATIONS=lots\n")
    result = await discograph("migrate", env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "CONFIRMATIONS" in result.stderr
    assert "Traceback" not in result.stderr


async def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    from discograph.processes import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    result = await discograph("migrate", env={"DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Postgres" in result.stderr


async def test_deploy_with_demo_creates_and_mints_the_demo_catalog(
    anvil: Anvil, database_url: str, tmp_path: Path
) -> None:
    result = await discograph(
        "deploy",
        "--demo",
        env={
            "RPC_URL": anvil.rpc_url,
            "DATABASE_URL": database_url,
            "MINTER_PRIVATE_KEY": ANVIL_DEV_KEYS[0],
        },
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    address = result.stdout.split("ALBUM_CONTRACT=")[1].strip()
    async with RpcClient(anvil.rpc_url) as rpc:
        (next_id,) = await call_view(rpc, address, "nextTokenId")
    conn = await asyncpg.connect(database_url)
    try:
        albums = await conn.fetchval("SELECT count(*) FROM albums")
    finally:
        await conn.close()
    assert next_id == albums + 1  # every demo album minted once
    assert albums == sum(len(a) for _, a in DEMO_CATALOG)


async def test_api_with_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    from discograph.processes import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    result = await discograph("api", env={"DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Postgres" in result.stderr


async def test_token_prints_a_jwt_the_api_accepts(tmp_path: Path) -> None:
    import jwt

    secret = "cli-test-secret-0123456789abcdefghijkl"
    artist = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    result = await discograph(
        "token",
        "--sub",
        artist,
        "--role",
        "artist",
        "--ttl",
        "120",
        env={"JWT_SECRET": secret, "JWT_AUDIENCE": "discograph"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"], audience="discograph")
    assert claims["sub"] == artist
    assert claims["role"] == "artist"
    assert 110 <= claims["exp"] - claims["iat"] <= 120
    missing = await discograph("token", "--sub", "x", "--role", "admin", env={}, cwd=tmp_path)
    assert missing.returncode == 2
    assert "JWT_SECRET" in missing.stderr
    assert "Traceback" not in missing.stderr


async def test_api_workers_share_the_port_and_sum_their_metrics(
    database_url: str, tmp_path: Path
) -> None:
    """`discograph api --workers 2`: two processes answer on one port; /metrics (multi-process
    mode) counts the requests of both; SIGTERM stops them all."""
    import httpx

    from discograph.processes import ChildProcess, free_port
    from tests.conftest import api_env

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env |= api_env(database_url, HTTP_PORT=str(port), LOG_LEVEL="WARNING")
    env["PYTHONPATH"] = str(REPO_ROOT)
    argv = [sys.executable, "-m", "discograph.cli", "--env-file", "/dev/null"]
    argv += ["api", "--workers", "2"]
    server = ChildProcess("api", argv, log_path=tmp_path / "api.log", env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        # A new connection each time: uvicorn's workers take turns accepting them.
        response = httpx.get(base + path, headers={"Connection": "close"}, timeout=5)
        return response.status_code, response.text

    def answers() -> bool:
        try:
            return get("/health/live")[0] == 200
        except httpx.HTTPError:
            return False

    try:
        await asyncio.to_thread(server.wait_until, answers, 60, "serving")
        workers = await asyncio.to_thread(_children_named, server.pid, "spawn_main")
        assert len(workers) == 2, workers
        for _ in range(20):
            status, _ = await asyncio.to_thread(get, "/status")
            assert status == 200
        _, metrics = await asyncio.to_thread(get, "/metrics")
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("discograph_requests_total{") and 'path="/status"' in line
        )
        assert served == 20, metrics[:2000]
    finally:
        server.stop()
    assert server.popen.returncode == 0, server.log_tail()
    assert not [pid for pid in workers if _alive(pid)]


def _children_named(pid: int, marker: str) -> list[int]:
    found = []
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            stat = (child / "stat").read_text().split()
            cmdline = (child / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[3]) == pid and marker in cmdline:
            found.append(int(child.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
