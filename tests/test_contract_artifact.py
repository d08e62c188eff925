"""The committed artifacts (AlbumNFT, BenchTransfers) are what the pinned compiler produces."""

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "abis" / "AlbumNFT.json"
BENCH_ARTIFACT = ROOT / "abis" / "BenchTransfers.json"


def _abi_entry(abi: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [e for e in abi if e.get("type") == kind and e.get("name") == name]
    assert len(matches) == 1, f"expected exactly one {kind} {name!r} in the ABI, got {len(matches)}"
    return matches[0]


def _signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"


def test_committed_artifacts_match_fresh_compile() -> None:
    # No skip when node or solc is missing: `make test` installs node_modules first, so a missing
    # toolchain is a broken checkout, not an optional feature.
    assert (ROOT / "node_modules" / "solc").is_dir(), "node_modules/solc missing: run `npm ci`"
    result = subprocess.run(
        ["node", str(ROOT / "contracts" / "compile.js"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # `--check` covers every contract, not only the first one it compiles.
    for name in ("AlbumNFT", "BenchTransfers"):
        assert f"abis/{name}.json is up to date" in result.stdout, result.stdout


def test_artifact_exposes_album_mint_and_standard_events() -> None:
    artifact = json.loads(ARTIFACT.read_text())
    abi = artifact["abi"]

    mint = _abi_entry(abi, "function", "mintAlbum")
    assert _signature(mint) == "mintAlbum(address,bytes32,string)"
    assert [o["type"] for o in mint["outputs"]] == ["uint256"]

    minted = _abi_entry(abi, "event", "AlbumMinted")
    assert _signature(minted) == "AlbumMinted(uint256,bytes32,address,string)"
    assert [i["indexed"] for i in minted["inputs"]] == [True, True, True, False]

    transfer = _abi_entry(abi, "event", "Transfer")
    assert _signature(transfer) == "Transfer(address,address,uint256)"
    assert _signature(_abi_entry(abi, "event", "MetadataUpdate")) == "MetadataUpdate(uint256)"

    assert artifact["compiler"]["version"].startswith("0.8.30")
    assert artifact["bytecode"].startswith("0x")
    assert artifact["deployedBytecode"].startswith("0x")


def test_bench_artifact_exposes_emit_block_owner_of_and_standard_transfer() -> None:
    artifact = json.loads(BENCH_ARTIFACT.read_text())
    abi = artifact["abi"]

    emit_block = _abi_entry(abi, "function", "emitBlock")
    assert _signature(emit_block) == "emitBlock(address[],uint256[],address[])"
    owner_of = _abi_entry(abi, "function", "ownerOf")
    assert _signature(owner_of) == "ownerOf(uint256)"
    assert [o["type"] for o in owner_of["outputs"]] == ["address"]
    next_id = _abi_entry(abi, "function", "nextTokenId")
    assert next_id["stateMutability"] == "view"
    assert [o["type"] for o in next_id["outputs"]] == ["uint256"]

    # The very event (signature and indexing) indexers filter ERC-721 transfers on.
    transfer = _abi_entry(abi, "event", "Transfer")
    assert _signature(transfer) == "Transfer(address,address,uint256)"
    assert [i["indexed"] for i in transfer["inputs"]] == [True, True, True]

    assert artifact["sourceName"] == "bench/BenchTransfers.sol"
    assert artifact["compiler"]["version"].startswith("0.8.30")
    assert artifact["deployedBytecode"].startswith("0x")
