"""API basics: status, health, X-Indexed-Block, OpenAPI, metrics, error shape."""

from __future__ import annotations

import random
from typing import Any

from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from tests.indexing import ChainDriver, index_to_head, indexer_settings


async def test_status_reports_the_indexed_block_and_contracts(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(3))
    (album,) = await driver.deploy(1)
    await driver.random_activity(4)
    indexed = await index_to_head(
        database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    )
    response = await api_client.get("/status")
    assert response.status_code == 200
    body = response.json()
    assert body["indexed_block"] == indexed
    assert response.headers["x-indexed-block"] == str(indexed)
    assert body["chain_id"] == 31337
    assert [c["address"] for c in body["contracts"]] == [album]
    ready = await api_client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"


async def test_ready_is_503_before_anything_is_indexed(api_client: Any) -> None:
    response = await api_client.get("/health/ready")
    assert response.status_code == 503
    assert (await api_client.get("/health/live")).status_code == 200
    status = await api_client.get("/status")
    assert status.status_code == 200
    assert status.json()["indexed_block"] is None


async def test_openapi_and_metrics_are_served(api_client: Any) -> None:
    schema = await api_client.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/status" in schema.json()["paths"]
    await api_client.get("/status")
    metrics = await api_client.get("/metrics")
    assert metrics.status_code == 200
    assert "discograph_requests_total" in metrics.text


async def test_unknown_route_is_a_json_404(api_client: Any) -> None:
    response = await api_client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json()["status_code"] == 404


async def test_a_statement_timeout_is_a_503_with_retry_after_not_a_500(database_url: str) -> None:
    """Postgres cancelling a read (57014, the class of "shutting down" and "cannot connect
    now" too) is a retryable 503, never a 500 that would claim a bug."""
    import asyncpg
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from discograph.settings import load_settings
    from tests.conftest import api_env

    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(
            f"ALTER DATABASE \"{database_url.rsplit('/', 1)[1]}\" SET statement_timeout = '300ms'"
        )
        settings = load_settings(api_env(database_url), env_file=None)
        async with AsyncTestClient(app=create_app(settings, database_url)) as client:
            async with admin.transaction():
                await admin.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
                response = await client.get("/status")
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["detail"] == "database unavailable, retry shortly"
            assert (await client.get("/status")).status_code == 200  # the lock is gone
    finally:
        await admin.close()
