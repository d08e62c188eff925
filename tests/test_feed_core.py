"""The feed's pure core: wire messages, filters and per-connection queues (no I/O)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from api.feed.hub import Subscriber
from api.feed.messages import (
    BadRequest,
    Filters,
    item_of,
    parse_client_message,
    parse_query,
)

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
CHAIN = {"chain_id": 31337, "block_number": 9, "block_hash": "0x" + "ab" * 32}
EVENT = {**CHAIN, "tx_hash": "0x" + "cd" * 32, "log_index": 2, "contract": CONTRACT}


def transfer(token_id: str = "7", sender: str = ALICE, to: str = BOB) -> str:
    return json.dumps({"type": "transfer", **EVENT, "token_id": token_id, "from": sender, "to": to})


def test_a_transfer_row_becomes_its_payload_plus_the_cursor_and_nothing_else() -> None:
    item = item_of(41, transfer())
    message = json.loads(item.wire)
    assert message == {"cursor": "41", **json.loads(transfer())}
    assert (item.type, item.contract, item.token_id, item.from_, item.to) == (
        "transfer",
        CONTRACT,
        "7",
        ALICE,
        BOB,
    )


def test_removed_mint_status_and_finalized_rows_keep_their_fields() -> None:
    removed = {**json.loads(transfer()), "type": "removed", "removed_type": "transfer"}
    assert json.loads(item_of(1, json.dumps(removed)).wire) == {"cursor": "1", **removed}
    status = {
        "type": "mint_status",
        "chain_id": 31337,
        "mint_id": "a" * 8,
        "album_id": "b" * 8,
        "status": "queued",
        "requester": "artist-1",
        "to": BOB,
        "contract": None,
        "nonce": None,
        "tx_hash": None,
        "block_number": None,
        "block_hash": None,
        "token_id": None,
        "error": None,
    }
    item = item_of(2, json.dumps(status))
    assert item.requester == "artist-1"
    assert json.loads(item.wire)["requester"] == "artist-1"
    final = {"type": "finalized", **CHAIN}
    assert json.loads(item_of(3, json.dumps(final)).wire) == {"cursor": "3", **final}


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"colour": ["red"]}, "unknown parameter"),
        ({"since": ["1", "2"]}, "give it once"),
        ({"since": ["0x10"]}, "since"),
        ({"since": ["9" * 20]}, "since"),
        ({"token_id": ["-1"]}, "token_id"),
        ({"token_id": [str(2**256)]}, "token_id"),
        ({"address": ["0x1234"]}, "address"),
        ({"contract": [CONTRACT.replace("F", "f", 1)]}, "contract"),
        ({"album_id": ["nope"]}, "album_id"),
        ({"types": ["transfer,dance"]}, "types"),
        ({"types": [","]}, "types"),
    ],
)
def test_bad_query_values_are_refused_naming_the_parameter(
    query: dict[str, list[str]], problem: str
) -> None:
    with pytest.raises(BadRequest, match=problem):
        parse_query(query)


def test_filters_are_normalised_and_combined_with_and() -> None:
    since, filters = parse_query(
        {"since": ["5"], "address": [ALICE.lower()], "token_id": ["007"], "types": ["transfer"]}
    )
    assert since == 5
    assert filters == Filters(address=ALICE, token_id="7", types=frozenset({"transfer"}))
    assert filters.matches(item_of(1, transfer(token_id="7", sender=ALICE)))
    assert filters.matches(item_of(1, transfer(token_id="7", sender=BOB, to=ALICE)))
    assert not filters.matches(item_of(1, transfer(token_id="8")))
    final = item_of(2, json.dumps({"type": "finalized", **CHAIN}))
    assert filters.matches(final) is False  # types still applies to finalized
    assert Filters(contract="0x" + "00" * 20).matches(final)  # entity filters do not


def test_client_messages_are_auth_ping_or_pong_and_nothing_else() -> None:
    assert parse_client_message('{"type":"auth","token":"t"}').token == "t"  # type: ignore[union-attr]
    for bad in ("nope", '{"type":"dance"}', '{"type":"ping","extra":1}', "[]"):
        with pytest.raises(BadRequest):
            parse_client_message(bad)


def test_a_queue_over_its_limit_overflows_once_and_empty_batches_only_move_the_position() -> None:
    overflowed: list[bool] = []
    queue = Subscriber(Filters(), None, 10, lambda: overflowed.append(True))
    queue.offer("a", 1, 50)  # one batch always fits an empty queue
    for seq in range(2, 1000):
        queue.offer(None, seq, 0)  # nothing for this connection
    assert list(queue.frames) == [("a", 999, 50)]
    queue.offer("b", 1000, 1)
    assert overflowed == [True]
    queue.offer("c", 1001, 1)
    assert overflowed == [True]
    assert queue.take() == [("a", 999, 50)]


async def test_outbox_pruning_drops_only_old_rows_in_batches_and_keeps_the_newest(
    pool: Any,
) -> None:
    from db.outbox import outbox_bounds, prune_outbox
    from indexer.service import prune_outbox_forever

    await pool.execute(
        "INSERT INTO outbox (chain_id, kind, payload, created_at)"
        " SELECT 1, 'finalized', '{}'::jsonb, now() - make_interval(days => 30 - n / 1000)"
        " FROM generate_series(1, 12000) AS n"
    )
    await pool.execute(
        "INSERT INTO outbox (chain_id, kind, payload) SELECT 1, 'finalized', '{}'::jsonb"
        " FROM generate_series(1, 5)"
    )
    assert await prune_outbox(pool, 7 * 86400, batch=5000) == 5000
    pruner = asyncio.create_task(prune_outbox_forever(pool, 7 * 86400, every=3600, batch=5000))
    try:
        for _ in range(100):
            if (await outbox_bounds(pool)) == (12001, 12005):
                break
            await asyncio.sleep(0.05)
    finally:
        pruner.cancel()
    assert await outbox_bounds(pool) == (12001, 12005)
    await pool.execute("UPDATE outbox SET created_at = now() - interval '30 days'")
    assert await prune_outbox(pool, 7 * 86400) == 4
    assert await outbox_bounds(pool) == (12005, 12005), "the newest row always stays"
