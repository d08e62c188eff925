"""A local anvil chain, from the pinned npm package, for `discograph dev` and the tests."""

from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from discograph.errors import ConfigError
from discograph.processes import ChildProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
ANVIL_NPM_BIN = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
ANVIL_CHAIN_ID = 31337
# anvil's default mnemonic ("test test ... junk") derives these well-known, public dev keys.
ANVIL_DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)


def anvil_binary() -> Path:
    """The anvil executable: the pinned npm one, else `anvil` on PATH (the Docker image)."""
    if ANVIL_NPM_BIN.is_file():
        return ANVIL_NPM_BIN
    found = shutil.which("anvil")
    if found is None:
        raise ConfigError(
            "anvil not found: run `npm ci` (package @foundry-rs/anvil-linux-amd64) or set RPC_URL"
        )
    return Path(found)


def _rpc(url: str, method: str, params: list[object]) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback URL we built ourselves
        url, data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
        return json.loads(response.read())["result"]


@dataclass
class Anvil:
    """A running anvil: its URL and process. Stop it with `stop()` (or use `with`)."""

    rpc_url: str
    process: ChildProcess
    chain_id: int = ANVIL_CHAIN_ID
    dev_keys: tuple[str, ...] = field(default=ANVIL_DEV_KEYS)

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_anvil(
    log_dir: Path,
    *,
    block_time: float | None = None,
    state_file: Path | None = None,
    chain_id: int = ANVIL_CHAIN_ID,
    extra_args: tuple[str, ...] = (),
    timeout: float = 20.0,
    port: int | None = None,
    state_interval: int = 5,
) -> Anvil:
    """Start anvil on a free loopback port (or `port`: a restart in place); automine unless
    `block_time` is given.

    With `state_file` the chain is loaded from it at start and saved to it every
    `state_interval` seconds and on exit, so a dev chain survives restarts.
    """
    port = port or free_port()
    argv = [
        str(anvil_binary()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
        "--accounts",
        str(len(ANVIL_DEV_KEYS)),
    ]
    if block_time is not None:
        argv += ["--block-time", f"{block_time:g}"]
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--state", str(state_file), "--state-interval", str(state_interval)]
    argv += list(extra_args)
    process = ChildProcess("anvil", argv, log_path=log_dir / f"anvil-{port}.log")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return _rpc(url, "eth_chainId", []) is not None
        except OSError:
            return False

    process.wait_until(answers, timeout, "answering JSON-RPC")
    return Anvil(rpc_url=url, process=process, chain_id=chain_id)
