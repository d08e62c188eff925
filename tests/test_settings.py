"""Settings: environment and .env, fail-fast validation naming the variable, hidden secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from discograph.errors import ConfigError
from discograph.settings import Secret, Settings, load_settings, redact_url

KEY = "0x" + "ab" * 32


def test_defaults_without_any_variable() -> None:
    settings = load_settings({}, env_file=None)
    assert settings.database_url is None
    assert settings.read_database_url is None  # the API reads the primary
    assert settings.confirmations == 12
    assert settings.reorg_window == 128
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8000)
    assert settings.rpc_url == ()


def test_values_are_parsed_from_strings() -> None:
    settings = load_settings(
        {
            "RPC_URL": "http://a:8545, http://b:8545",
            "CONFIRMATIONS": "1",
            "CHAIN_ID": "31337",
            "EXTRA_CONTRACTS": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "HTTP_PORT": "9000",
        },
        env_file=None,
    )
    assert settings.rpc_url == ("http://a:8545", "http://b:8545")
    assert settings.confirmations == 1
    assert settings.chain_id == 31337
    assert settings.extra_contracts == ("0x5FbDB2315678afecb367f032d93F642f64180aa3",)
    assert settings.http_port == 9000


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# local settings\nexport CONFIRMATIONS=3\nLOG_LEVEL='DEBUG'\nHTTP_PORT=\"8100\"\n"
    )
    settings = load_settings({"CONFIRMATIONS": "5"}, env_file=env_file)
    assert settings.confirmations == 5
    assert settings.log_level == "DEBUG"
    assert settings.http_port == 8100


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONFIRMATIONS", "many"),
        ("CONFIRMATIONS", "-1"),
        ("HTTP_PORT", "70000"),
        ("CHAIN_ID", "0"),
        ("REORG_WINDOW", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("RPC_URL", "ftp://node"),
        ("RPC_WS_URL", "http://node"),
        ("DATABASE_URL", "mysql://x"),
        ("READ_DATABASE_URL", "mysql://replica"),
        ("REDIS_URL", "memcached://x"),
        ("ALBUM_CONTRACT", "0x1234"),
        ("EXTRA_CONTRACTS", "0x5FbDB2315678afecb367f032d93F642f64180aa3,nope"),
        ("MINTER_PRIVATE_KEY", "0x1234"),
    ],
)
def test_bad_value_fails_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value}, env_file=None)
    assert variable in str(caught.value)


def test_bad_line_in_env_file_names_file_and_line(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=INFO\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=r"\.env:2"):
        load_settings({}, env_file=env_file)


def test_secrets_never_print() -> None:
    settings = load_settings(
        {
            "MINTER_PRIVATE_KEY": KEY,
            "JWT_SECRET": "s3cr3t-jwt-value",
            "DATABASE_URL": "postgresql://app:pg-password@db:5432/discograph",
            "READ_DATABASE_URL": "postgresql://app:replica-password@replica:5432/discograph",
            "REDIS_URL": "redis://:redis-password@cache:6379/0",
            "RPC_URL": "https://node.example/v3?apikey=rpc-api-key",
        },
        env_file=None,
    )
    shown = repr(settings) + str(settings)
    for secret in (
        KEY[2:],
        "s3cr3t-jwt-value",
        "pg-password",
        "replica-password",
        "redis-password",
        "rpc-api-key",
    ):
        assert secret not in shown
    assert "***" in shown
    assert settings.minter_private_key is not None
    assert settings.minter_private_key.reveal() == KEY
    assert str(Secret("x")) == "***"


def test_invalid_private_key_error_does_not_echo_it() -> None:
    bad = "0x" + "zz" * 32
    with pytest.raises(ConfigError) as caught:
        load_settings({"MINTER_PRIVATE_KEY": bad}, env_file=None)
    assert "zz" not in str(caught.value)


def test_key_file_is_read_and_validated(tmp_path: Path) -> None:
    key_file = tmp_path / "minter.key"
    key_file.write_text(KEY + "\n")
    settings = load_settings({"MINTER_KEY_FILE": str(key_file)}, env_file=None)
    key = settings.minter_key()
    assert key is not None
    assert key.reveal() == KEY
    key_file.write_text("not a key")
    with pytest.raises(ConfigError, match="MINTER_KEY_FILE"):
        settings.minter_key()
    missing = load_settings({"MINTER_KEY_FILE": str(tmp_path / "absent")}, env_file=None)
    with pytest.raises(ConfigError, match="MINTER_KEY_FILE"):
        missing.minter_key()


def test_key_and_key_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        load_settings(
            {"MINTER_PRIVATE_KEY": KEY, "MINTER_KEY_FILE": str(tmp_path / "k")}, env_file=None
        )


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.confirmations = 3  # type: ignore[misc]


def test_env_example_lists_every_setting() -> None:
    example = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    for field in Settings.__struct_fields__:
        assert f"{field.upper()}=" in example, field


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:pw@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("postgresql://postgres@127.0.0.1:5432/x", "postgresql://postgres@127.0.0.1:5432/x"),
        ("https://node/v3?key=abc", "https://node/v3?***"),
        (
            "https://mainnet.example.io/v3/9aa3d95b3bc440fa88ea12eaa4456161",
            "https://mainnet.example.io/v3/***",
        ),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
