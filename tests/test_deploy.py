"""deploy/: the Prometheus rules and scrape config, the Grafana dashboard and provisioning, and
their Compose services. Every metric name they use must be one that a running indexer, minter
and API actually serve."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from discograph.processes import free_port
from tests.conftest import REPO_ROOT
from tests.minting import MINTER_KEY, grant_minter_key
from tests.stack import CliProcess, api_process, cli_env
from tests.test_api_writes import ADMIN, ARTIST_WALLET, bearer, token

DEPLOY = REPO_ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "discograph.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "discograph.yml"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

# Another engineer is adding these two gauges to the API's /metrics (the `discograph audit`
# work). Until that lands they may be missing from a running stack; every other name may not.
ADDED_BY_THE_AUDIT_WORK = frozenset(
    {"discograph_audit_differences", "discograph_audit_last_run_timestamp_seconds"}
)
# Series Prometheus makes itself for every target; no process serves them.
PROMETHEUS_SYNTHETIC = frozenset({"up"})
SEVERITIES = {"info", "warning", "critical"}

# --- a small PromQL reader: balanced brackets, metric names --------------------------------------

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OPERATOR_WORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
CLOSING = {"(": ")", "[": "]", "{": "}"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"(0x[0-9a-fA-F]+|\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+)([smhdwy]|ms)*")


def _skip_string(expr: str, i: int) -> int:
    quote = expr[i]
    i += 1
    while i < len(expr):
        if expr[i] == "\\" and quote != "`":
            i += 2
            continue
        if expr[i] == quote:
            return i + 1
        i += 1
    raise ValueError(f"unterminated string in {expr!r}")


def _skip_group(expr: str, i: int) -> int:
    """From an opening bracket at i, past its matching closing one (strings skipped)."""
    stack = [CLOSING[expr[i]]]
    i += 1
    while stack:
        if i >= len(expr):
            raise ValueError(f"unbalanced {stack[-1]!r} in {expr!r}")
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        if c in CLOSING:
            stack.append(CLOSING[c])
        elif c in ")]}" and c != stack.pop():
            raise ValueError(f"mismatched {c!r} in {expr!r}")
        i += 1
    return i


def check_balanced(expr: str) -> None:
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c in CLOSING:
            i = _skip_group(expr, i)
        elif c in ")]}":
            raise ValueError(f"unopened {c!r} in {expr!r}")
        else:
            i += 1


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana query: `$variables`) selects."""
    check_balanced(expr)
    names: set[str] = set()
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c in "{[":  # label matchers, range durations
            i = _skip_group(expr, i)
        elif c == "$":
            match = IDENT.match(expr, i + 1)
            i = match.end() if match else i + 1
        elif c.isdigit() or (c == "." and expr[i + 1 : i + 2].isdigit()):
            match = NUMBER.match(expr, i)
            assert match is not None
            i = match.end()
        elif IDENT.match(expr, i):
            match = IDENT.match(expr, i)
            assert match is not None
            word, i = match.group(), match.end()
            rest = expr[i:].lstrip()
            if word in GROUPING:
                if rest.startswith("("):
                    i = _skip_group(expr, len(expr) - len(rest))
            elif word in AGGREGATIONS or word.lower() in OPERATOR_WORDS:
                pass
            elif rest.startswith("("):
                pass  # a function
            else:
                names.add(word)
        else:
            i += 1
    return names


def test_the_promql_reader() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, path) (rate(x_bucket{path=~"/a(b"}[$__interval])))'
        " / on() group_left sum without (job) (y_total offset 5m) > 1e3 and absent(up)"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "up"}
    assert metric_names("time() - max(a_seconds) > 25 * 3600") == {"a_seconds"}
    for broken in ("sum(rate(x[5m])", "max(a))", "rate(x[5m)]", 'a{b="c}'):
        with pytest.raises(ValueError, match=r"unbalanced|unopened|mismatched|unterminated"):
            metric_names(broken)


# --- the rules --------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def rule_exprs() -> dict[str, str]:
    return {rule["alert"]: str(rule["expr"]) for rule in alert_rules()}


def dashboard_exprs() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['title']} {target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }


def test_alert_rules_are_valid(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool:
        # The scrape config names the rules where the container mounts them: check a copy
        # that names them here.
        config = yaml.safe_load(PROMETHEUS.read_text())
        config["rule_files"] = [str(ALERTS)]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        for check in (["rules", str(ALERTS)], ["config", str(tmp_path / "prometheus.yml")]):
            result = subprocess.run(
                [promtool, "check", *check],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr
    # Without promtool (not in the dev image), and with it too: the shape Prometheus expects.
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names)), "group names are unique"
    alerts = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"}, group.get("name")
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
            assert re.fullmatch(r"Discograph[A-Za-z0-9]+", rule["alert"]), rule["alert"]
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
            assert rule["labels"]["severity"] in SEVERITIES, rule
            assert rule["annotations"]["summary"].strip(), rule
            assert metric_names(str(rule["expr"])), rule["alert"]
            alerts.append(rule["alert"])
    assert len(alerts) == len(set(alerts)), "alert names are unique"
    # What issue 12 asks the rules to cover.
    covered = " ".join(rule_exprs().values())
    for name in (
        "discograph_lag_blocks",
        "discograph_indexed_block",
        "discograph_rpc_failovers_total",
        "discograph_requests_total",
        "discograph_mint_requests_total",
        "discograph_minter_inflight",
        "discograph_audit_differences",
    ):
        assert name in covered, name


def test_dashboard_panels_query_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(queries) >= 20
    for panel in queries:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]), (panel["title"], target["expr"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " | ".join(panel["title"] for panel in queries)
    for wanted in (
        "Indexer lag (blocks)",
        "Indexer lag (seconds)",
        "Events indexed per second",
        "Reorgs",
        "Reorg depth",
        "RPC errors per URL",
        "API latency p50 by route",
        "API latency p99 by route",
        "Requests by route and status",
        "Response cache hit ratio",
        "Feed clients",
        "Slow-consumer closes",
        "Mint state changes",
        "Minter nonce gaps",
    ):
        assert wanted in titles, wanted
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# --- Compose and the scrape config ------------------------------------------------------------


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path of a service's bind mounts."""
    mounts = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = REPO_ROOT / source
    return mounts


def test_compose_runs_prometheus_and_grafana_from_deploy() -> None:
    services = _services()
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        tag = image.rpartition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name} image is pinned: {image}"
        for mount in _mounts(services[name]).values():
            assert mount.exists(), mount
        assert any(port.startswith("127.0.0.1:") for port in services[name]["ports"])
    prometheus = _mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == PROMETHEUS
    config = yaml.safe_load(PROMETHEUS.read_text())
    for rule_file in config["rule_files"]:
        assert prometheus[rule_file] == ALERTS
    grafana = _mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == DASHBOARD.parent


def test_prometheus_scrapes_every_service_where_it_listens() -> None:
    services = _services()
    jobs = {
        job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    }

    def targets(job: dict[str, Any]) -> set[tuple[str, int]]:
        found = {
            (name, int(sd["port"])) for sd in job.get("dns_sd_configs", []) for name in sd["names"]
        }
        for static in job.get("static_configs", []):
            found |= {(t.split(":")[0], int(t.split(":")[1])) for t in static["targets"]}
        return found

    indexer, minter, api = (services[n]["environment"] for n in ("indexer", "minter", "api"))
    assert targets(jobs["discograph-indexer"]) == {("indexer", int(indexer["METRICS_PORT"]))}
    assert targets(jobs["discograph-minter"]) == {("minter", int(minter["METRICS_PORT"]))}
    assert targets(jobs["discograph-api"]) == {("api", int(api["HTTP_PORT"]))}
    assert jobs["discograph-api"].get("metrics_path", "/metrics") == "/metrics"
    for service in (indexer, minter, api):
        # Reachable from the prometheus container.
        assert service["HTTP_HOST"] == "0.0.0.0"  # noqa: S104
    # Every `job="…"` an alert names is scraped.
    for alert, expr in rule_exprs().items():
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, (alert, job)


def test_docker_compose_accepts_the_stack_with_monitoring() -> None:
    from tests.test_compose import docker_compose

    result = docker_compose("config", "--services")
    assert result.returncode == 0, result.stderr
    assert {"prometheus", "grafana"} <= set(result.stdout.split())


# --- every name on a running stack's /metrics -------------------------------------------------

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def exposed_names(text: str) -> set[str]:
    """Names a scrape of this exposition gives Prometheus: every sample, and for families
    without samples yet (a labelled counter never incremented) what their `# TYPE` line
    announces."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.add(name)
            if kind in ("histogram", "summary"):
                names |= {name + suffix for suffix in HISTOGRAM_SUFFIXES}
            elif kind == "counter":
                names |= {name.removesuffix("_total") + "_total", name + "_created"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([A-Za-z_:][\w:]*)(\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(4))
    return total


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback)
        return str(answer.read().decode())


def scraped(url: str, wanted: str) -> bool:
    try:
        return wanted in scrape(url)
    except OSError:
        return False


async def test_every_dashboard_and_alert_metric_is_served_by_a_running_stack(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    await grant_minter_key(rpc, dev_signers[0], album_contract)
    indexer_port, minter_port, dead_port = free_port(), free_port(), free_port()
    common = {
        "DATABASE_URL": database_url,
        "ALBUM_CONTRACT": album_contract,
        "CONFIRMATIONS": "1",
        "POLL_INTERVAL": "0.1",
        "HTTP_HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
    }
    # The indexer's first RPC_URL refuses connections: it fails over to anvil at once, so the
    # per-URL error and fail-over counters have samples.
    indexer_env = cli_env(**common, RPC_URL=f"http://127.0.0.1:{dead_port},{anvil.rpc_url}")
    indexer_env["METRICS_PORT"] = str(indexer_port)
    minter_env = cli_env(**common, RPC_URL=anvil.rpc_url, MINTER_PRIVATE_KEY=MINTER_KEY)
    minter_env["METRICS_PORT"] = str(minter_port)
    indexer = CliProcess("indexer", "index", indexer_env, tmp_path)
    minter = CliProcess("minter", "minter", minter_env, tmp_path)
    indexer_metrics = f"http://127.0.0.1:{indexer_port}/metrics"
    minter_metrics = f"http://127.0.0.1:{minter_port}/metrics"
    try:
        with api_process(database_url, redis_url, tmp_path) as (api_url, _):
            await asyncio.to_thread(
                indexer.wait_until,
                lambda: scraped(indexer_metrics, "discograph_indexed_block"),
                30,
                "serving metrics",
            )
            await asyncio.to_thread(
                minter.wait_until,
                lambda: scraped(minter_metrics, "discograph_nonce_gaps"),
                30,
                "serving metrics",
            )
            await _traffic(api_url, database_url, indexer, minter)
            indexer_text = scrape(indexer_metrics)
            served = {
                "indexer": exposed_names(indexer_text),
                "minter": exposed_names(scrape(minter_metrics)),
                "api": exposed_names(scrape(f"{api_url}/metrics")),
            }
    finally:
        indexer.stop()
        minter.stop()

    # Each job serves its own part (what prometheus.yml scrapes it for).
    assert "discograph_lag_blocks" in served["indexer"]
    # The refused first URL: counted under its position, and the move away from it.
    assert sample_sum(indexer_text, "discograph_rpc_failovers_total", from_url="0") >= 1
    assert sample_sum(indexer_text, "discograph_rpc_url_errors_total", url="0") >= 1
    assert "discograph_mint_requests_total" in served["minter"]
    assert "discograph_request_duration_seconds_bucket" in served["api"]
    assert "discograph_lag_blocks" not in served["api"]  # the API runs no indexer

    everywhere = set().union(*served.values()) | PROMETHEUS_SYNTHETIC
    used = {f"alert {name}": metric_names(expr) for name, expr in rule_exprs().items()} | {
        f"panel {name}": metric_names(expr) for name, expr in dashboard_exprs().items()
    }
    missing = {
        where: sorted(names - everywhere - ADDED_BY_THE_AUDIT_WORK)
        for where, names in used.items()
        if names - everywhere - ADDED_BY_THE_AUDIT_WORK
    }
    assert not missing, missing


async def _traffic(
    api_url: str, database_url: str, indexer: CliProcess, minter: CliProcess
) -> None:
    """Requests that make every labelled series appear: reads, writes and a mint that the
    minter sends and the indexer indexes, a websocket client."""
    async with aiohttp.ClientSession(api_url) as http, http.ws_connect("/ws/events") as ws:
        async with http.post(
            "/artists", json={"name": "Metrics", "wallet": ARTIST_WALLET}, headers=ADMIN
        ) as r:
            assert r.status == 201, await r.text()
            artist = (await r.json())["id"]
        auth = bearer(token(artist))
        body = {"title": "Dashboards", "tracks": [{"title": "Alerts", "duration_s": 60}]}
        async with http.post("/albums", json=body, headers=auth) as r:
            assert r.status == 201, await r.text()
            album = (await r.json())["id"]
        async with http.post(f"/albums/{album}/mint", headers=auth) as r:
            assert r.status == 202, await r.text()
        for _ in range(2):
            async with http.get("/albums") as r:
                assert r.status == 200
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(300):
                assert indexer.running(), indexer.log_tail()
                assert minter.running(), minter.log_tail()
                minted = await conn.fetchval(
                    "SELECT count(*) FROM nfts n JOIN mint_requests m"
                    " ON m.album_id = n.album_id WHERE m.status <> 'queued'"
                )
                if minted:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the mint was not sent and indexed in 30 s")
        finally:
            await conn.close()
        async with http.get(f"/albums/{album}") as r:
            assert r.status == 200
        await ws.close()
