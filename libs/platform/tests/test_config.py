from pathlib import Path

import pytest

from onefold.platform.config import ConfigError, load_settings, prepare_data_dir


def test_defaults_then_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "onefold.yaml"
    config.write_text("grpc:\n  port: 6000\nnats:\n  url: nats://example:4222\n")
    settings = load_settings(
        "ingest", config, env={"ONEFOLD_GRPC__PORT": "7000", "ONEFOLD_DATA_DIR": "/srv/x"}
    )
    assert settings.grpc.port == 7000  # environment beats the file
    assert settings.nats.url == "nats://example:4222"
    assert settings.database_url() == "sqlite:////srv/x/ingest.db"
    assert settings.auth_database_url() == "sqlite:////srv/x/auth.db"


def test_unknown_key_in_file_is_one_clear_sentence(tmp_path: Path) -> None:
    config = tmp_path / "onefold.yaml"
    config.write_text("grpc:\n  prot: 6000\n")
    with pytest.raises(ConfigError) as caught:
        load_settings("ingest", config, env={})
    assert (
        str(caught.value) == f"unknown configuration key 'grpc.prot' in {config} (or ONEFOLD_* environment)"
    )


def test_unknown_environment_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"unknown configuration key 'nats\.ulr'"):
        load_settings("ingest", env={"ONEFOLD_NATS__ULR": "nats://x"})


def test_invalid_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"invalid configuration value for 'grpc\.port'"):
        load_settings("ingest", env={"ONEFOLD_GRPC__PORT": "70000"})


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings("ingest", tmp_path / "absent.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpc: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_settings("ingest", bad, env={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings("ingest", listy, env={})


def test_unusable_data_dir(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"data directory .* is not usable"):
        prepare_data_dir(a_file / "data")


def test_ingest_section_from_file_and_environment(tmp_path: Path) -> None:
    defaults = load_settings("ingest", env={}).ingest
    assert defaults.dedupe_window_seconds == 24 * 3600
    assert defaults.default_rate_limit_per_second == 1000
    assert (defaults.max_group_events, defaults.linger_seconds) == (5000, 0.0005)

    config = tmp_path / "onefold.yaml"
    config.write_text(
        "ingest:\n  dedupe_window_seconds: 7200\n  max_group_events: 200\n  linger_seconds: 0\n"
    )
    settings = load_settings(
        "ingest",
        config,
        env={
            "ONEFOLD_INGEST__DEDUPE_WINDOW_SECONDS": "3600",
            "ONEFOLD_INGEST__DEFAULT_RATE_LIMIT_PER_SECOND": "2.5",
        },
    )
    assert settings.ingest.dedupe_window_seconds == 3600  # environment beats the file
    assert settings.ingest.default_rate_limit_per_second == 2.5
    assert (settings.ingest.max_group_events, settings.ingest.linger_seconds) == (200, 0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dedupe_window_seconds", "0"),
        ("dedupe_window_seconds", "-60"),
        ("dedupe_window_seconds", "inf"),
        ("dedupe_window_seconds", "a day"),
        ("default_rate_limit_per_second", "0"),
        ("default_rate_limit_per_second", "nan"),
        ("max_group_events", "0"),
        ("max_group_events", "1.5"),
        ("linger_seconds", "-0.001"),
    ],
)
def test_bad_ingest_value_is_one_sentence_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings("ingest", env={f"ONEFOLD_INGEST__{key.upper()}": value})
    message = str(caught.value)
    assert message.startswith(f"invalid configuration value for 'ingest.{key}' in defaults and environment: ")
    assert "\n" not in message


def test_bad_ingest_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "onefold.yaml"
    config.write_text("ingest:\n  default_rate_limit_per_second: -5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings("ingest", config, env={})
    assert str(caught.value) == (
        f"invalid configuration value for 'ingest.default_rate_limit_per_second' in {config} "
        "(or ONEFOLD_* environment): Input should be greater than 0"
    )
    config.write_text("ingest:\n  dedupe_window: 60\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'ingest\.dedupe_window'"):
        load_settings("ingest", config, env={})


EXAMPLE_SETTINGS = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "onefold.yaml"


def test_ports_are_fixed_by_default_shifted_by_base_and_set_one_by_one() -> None:
    assert load_settings("ingest", env={}).ports.chosen() == {
        "ingest_http": 7460,
        "ingest_grpc": 7461,
        "identity": 7462,
        "consent": 7463,
        "segments": 7464,
        "journeys": 7465,
        "nats": 7466,
    }
    env = {"ONEFOLD_PORTS__BASE": "8000", "ONEFOLD_PORTS__NATS": "4222"}
    chosen = load_settings("ingest", env=env).ports.chosen()
    assert (chosen["ingest_http"], chosen["journeys"], chosen["nats"]) == (8000, 8005, 4222)
    # base 0: every endpoint not set on its own gets a free port at start
    chosen = load_settings(
        "ingest", env={"ONEFOLD_PORTS__BASE": "0", "ONEFOLD_PORTS__CONSENT": "9000"}
    ).ports.chosen()
    assert chosen.pop("consent") == 9000
    assert set(chosen.values()) == {0}


def test_a_port_base_too_high_for_every_endpoint_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"invalid configuration value for 'ports\.base'"):
        load_settings("ingest", env={"ONEFOLD_PORTS__BASE": "65530"})
    with pytest.raises(ConfigError, match=r"unknown configuration key 'ports\.ingest'"):
        load_settings("ingest", env={"ONEFOLD_PORTS__INGEST": "7000"})


def test_the_example_settings_file_loads_for_every_service() -> None:
    for service in ("ingest", "identity", "consent", "segments", "journeys"):
        settings = load_settings(service, EXAMPLE_SETTINGS, env={})
        assert settings.ports.chosen()["ingest_http"] == 7460
