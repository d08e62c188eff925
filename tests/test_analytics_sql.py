"""docs/schema.md "Analytics examples": every `sql` block runs against a real indexed chain whose
events are spread over several UTC days, and answers what the test knows happened."""

from __future__ import annotations

import importlib.util
import random
import re
import statistics
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import ModuleType

import asyncpg

from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from tests.conftest import REPO_ROOT
from tests.indexing import ChainDriver, index_to_head, indexer_settings

SCHEMA_DOC = REPO_ROOT / "docs" / "schema.md"
LOADER = REPO_ROOT / "deploy" / "analytics" / "load_block_times.py"
# The address the docs' examples use: dev account 0's first deployment on a fresh anvil.
DOC_CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
ZERO = "0x" + "00" * 20
HOUR = 3600
DAY = 24 * HOUR


def analytics_blocks() -> dict[str, str]:
    """The `sql` blocks of the "Analytics examples" section, by their first comment line."""
    text = SCHEMA_DOC.read_text()
    start = text.index("\n## Analytics examples\n")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```sql\n(.*?)```", text[start:end], flags=re.DOTALL)
    titled = {}
    for block in blocks:
        first = block.strip().splitlines()[0]
        assert first.startswith("-- "), f"each analytics block starts with a comment: {first}"
        titled[first[3:].split(":")[0].rstrip(".")] = block
    assert len(titled) == len(blocks), "two analytics blocks share a title"
    return titled


def load_loader() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_block_times", LOADER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Event:
    """One Transfer the test caused: at `ts` (seconds), token `token` moved `frm` → `to`."""

    ts: int
    token: int
    frm: str
    to: str


def utc_day(ts: int) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


def holders_by_day(events: list[Event]) -> dict[date, int]:
    """Distinct non-zero owners at the end of every day from the first event's to the last's."""
    first, last = utc_day(events[0].ts), utc_day(events[-1].ts)
    answer = {}
    day = first
    while day <= last:
        end = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + DAY
        owners: dict[int, str] = {}
        for event in events:
            if event.ts < end:
                owners[event.token] = event.to
        answer[day] = len({owner for owner in owners.values() if owner != ZERO})
        day += timedelta(days=1)
    return answer


async def test_analytics_examples_answer_what_happened_on_chain(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str
) -> None:
    blocks = analytics_blocks()
    expected_titles = {
        "analytics.block_times",
        "Holders over time",
        "Transfers per day per album",
        "Top collectors",
        "Mint to first transfer, per token",
        "Mint to first transfer, median",
    }
    assert set(blocks) == expected_titles, sorted(blocks)

    driver = ChainDriver(rpc, dev_signers, random.Random(12))
    (contract,) = await driver.deploy(1)
    assert contract.lower() == DOC_CONTRACT  # the docs' queries name this address
    wallets = {name: dev_signers[i] for i, name in enumerate("ABCD", start=1)}

    # Start at the second midnight after the chain's clock, so no event shares the deploy's day.
    latest = await rpc.call("eth_getBlockByNumber", ["latest", False])
    day0 = (int(latest["timestamp"], 16) // DAY + 2) * DAY
    events: list[Event] = []

    async def at(ts: int) -> None:
        await rpc.call("anvil_setNextBlockTimestamp", [ts])

    async def mint(ts: int, to: str) -> int:
        await at(ts)
        _, token = await driver.mint(contract, wallets[to])
        events.append(Event(ts, token, ZERO, wallets[to].address.lower()))
        return token

    async def transfer(ts: int, token: int, to: str) -> None:
        await at(ts)
        frm = driver.owners[(contract, token)]
        await driver.transfer((contract, token), wallets[to])
        events.append(Event(ts, token, frm, wallets[to].address.lower()))

    # Day 0: three mints. Day 1: a sale and a mint. Day 2: nothing. Day 3: two sales, a mint.
    t1 = await mint(day0 + 10 * HOUR, "A")
    t2 = await mint(day0 + 11 * HOUR, "B")
    await mint(day0 + 12 * HOUR, "A")
    await transfer(day0 + DAY + 9 * HOUR, t1, "C")
    await mint(day0 + DAY + 10 * HOUR, "B")
    await transfer(day0 + 3 * DAY + 8 * HOUR, t2, "C")
    await transfer(day0 + 3 * DAY + 9 * HOUR, t1, "D")
    await mint(day0 + 3 * DAY + 11 * HOUR, "A")
    await rpc.call("anvil_mine", ["0x50"])  # part backfill (below finalized), part tip: both

    await index_to_head(database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=contract))
    loader = load_loader()
    assert await loader.load_block_times(database_url, anvil.rpc_url) == len(events)
    assert await loader.load_block_times(database_url, anvil.rpc_url) == 0  # nothing new

    conn = await asyncpg.connect(database_url)
    try:
        answers: dict[str, list[asyncpg.Record]] = {}
        for title, sql in blocks.items():
            if title == "analytics.block_times":
                await conn.execute(sql)  # the table's definition: idempotent with the loader's
                continue
            answers[title] = await conn.fetch(sql)
    finally:
        await conn.close()

    # Holders over time: every day from the first event to the last, the quiet day 2 included.
    got_holders = {row["day"]: row["holders"] for row in answers["Holders over time"]}
    assert got_holders == holders_by_day(events)
    assert list(got_holders.values()) == [2, 3, 3, 4]

    # Transfers per day per album.
    album_of = {token: driver.albums[(contract, token)] for token in {e.token for e in events}}
    per_day: dict[tuple[date, uuid.UUID], Counter[str]] = defaultdict(Counter)
    for event in events:
        kind = "mints" if event.frm == ZERO else "transfers"
        per_day[(utc_day(event.ts), album_of[event.token])][kind] += 1
    got_per_day = {
        (row["day"], row["album_id"]): Counter(
            {k: row[k] for k in ("transfers", "mints") if row[k]}
        )
        for row in answers["Transfers per day per album"]
    }
    assert got_per_day == per_day
    assert {row["title"] for row in answers["Transfers per day per album"]} == {None}

    # Top collectors: the final owners, most tokens first (ties by address).
    holdings = Counter(driver.owners.values())
    want_top = sorted(holdings.items(), key=lambda item: (-item[1], item[0]))[:10]
    got_top = [(row["wallet"], row["album_nfts"]) for row in answers["Top collectors"]]
    assert got_top == want_top
    assert got_top[0] == (wallets["A"].address.lower(), 2)
    assert all(row["albums"] == row["album_nfts"] for row in answers["Top collectors"])

    # Mint to first transfer: per token, then the median over the transferred ones.
    minted_at = {e.token: e.ts for e in events if e.frm == ZERO}
    first_move: dict[int, int] = {}
    for event in events:
        if event.frm != ZERO:
            first_move.setdefault(event.token, event.ts)
    per_token = {int(row["token_id"]): row for row in answers["Mint to first transfer, per token"]}
    assert set(per_token) == set(minted_at)
    for token, row in per_token.items():
        if token in first_move:
            assert row["mint_to_first_transfer"] == timedelta(
                seconds=first_move[token] - minted_at[token]
            )
            assert row["blocks"] == row["first_transfer_block"] - row["mint_block"] > 0
        else:
            assert row["mint_to_first_transfer"] is None
            assert row["first_transfer_block"] is None
    assert per_token[t1]["mint_to_first_transfer"] == timedelta(hours=23)
    assert per_token[t2]["mint_to_first_transfer"] == timedelta(days=2, hours=21)
    (median,) = answers["Mint to first transfer, median"]
    durations = [first_move[t] - minted_at[t] for t in first_move]
    assert median["tokens_transferred"] == len(durations) == 2
    assert median["median_time"] == timedelta(seconds=statistics.median(durations))
    assert median["median_time"] == timedelta(hours=46)
    blocks_moved = [row["blocks"] for row in per_token.values() if row["blocks"] is not None]
    assert median["median_blocks"] == statistics.median(blocks_moved)


def test_every_analytics_block_is_read_only_but_the_table_definition() -> None:
    """Analytics users run these as they are: only the block_times definition writes."""
    writes = re.compile(r"\b(INSERT|UPDATE|DELETE|DROP|ALTER|TRUNCATE)\b", re.IGNORECASE)
    for title, sql in analytics_blocks().items():
        code = "\n".join(line.split("--")[0] for line in sql.splitlines())
        if title == "analytics.block_times":
            assert "CREATE TABLE IF NOT EXISTS analytics.block_times" in code
            continue
        assert not writes.search(code), title
        assert "CREATE" not in code.upper(), title
        assert code.lstrip().upper().startswith(("SELECT", "WITH")), title
