from pathlib import Path

import pytest
from pydantic import Field

from onefold.platform.config import ConfigError, ServiceSection, load_settings, prepare_data_dir


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


class TuningSettings(ServiceSection):
    """A service's own section, as a service declares one (ingest's is onefold.ingest.settings)."""

    section = "ingest"

    window_seconds: float = Field(default=60.0, gt=0)
    batch: int = Field(default=10, gt=0)


def test_a_service_section_from_file_and_environment(tmp_path: Path) -> None:
    defaults = load_settings("ingest", env={}, sections=[TuningSettings]).section(TuningSettings)
    assert (defaults.window_seconds, defaults.batch) == (60.0, 10)

    config = tmp_path / "onefold.yaml"
    config.write_text("ingest:\n  window_seconds: 7200\n  batch: 200\n")
    settings = load_settings(
        "ingest", config, env={"ONEFOLD_INGEST__WINDOW_SECONDS": "3600"}, sections=[TuningSettings]
    )
    tuning = settings.section(TuningSettings)
    assert tuning.window_seconds == 3600  # environment beats the file
    assert tuning.batch == 200


def test_a_bad_service_section_value_is_one_sentence_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings("ingest", env={"ONEFOLD_INGEST__BATCH": "0"}, sections=[TuningSettings])
    assert str(caught.value) == (
        "invalid configuration value for 'ingest.batch' in defaults and environment: "
        "Input should be greater than 0"
    )
    config = tmp_path / "onefold.yaml"
    config.write_text("ingest:\n  window: 60\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'ingest\.window' in .*onefold\.yaml"):
        load_settings("ingest", config, env={}, sections=[TuningSettings])
    config.write_text("ingest: 60\n")
    with pytest.raises(ConfigError, match=r"configuration section 'ingest' in .* must hold a mapping"):
        load_settings("ingest", config, env={}, sections=[TuningSettings])


def test_a_service_section_is_kept_for_its_owner_by_the_other_services(tmp_path: Path) -> None:
    """One onefold.yaml for every service: the others load it without knowing the section's keys."""
    config = tmp_path / "onefold.yaml"
    config.write_text("ingest:\n  window_seconds: 5\n  batch: 0\n")
    for service in ("identity", "consent", "segments", "journeys", "destinations"):
        load_settings(service, config, env={"ONEFOLD_INGEST__BATCH": "-1"})
    # Read there anyway, it is validated then.
    with pytest.raises(ConfigError, match=r"invalid configuration value for 'ingest\.batch'"):
        load_settings("identity", config, env={}).section(TuningSettings)
    # Anything else that is not a section of the platform or of a service stays an error.
    config.write_text("ingets:\n  batch: 1\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'ingets'"):
        load_settings("identity", config, env={})


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
        "destinations": 7467,
        "insights": 7468,
    }
    env = {"ONEFOLD_PORTS__BASE": "8000", "ONEFOLD_PORTS__NATS": "4222"}
    chosen = load_settings("ingest", env=env).ports.chosen()
    assert (chosen["ingest_http"], chosen["journeys"], chosen["nats"]) == (8000, 8005, 4222)
    assert chosen["destinations"] == 8007
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
    for service in ("ingest", "identity", "consent", "segments", "journeys", "destinations"):
        settings = load_settings(service, EXAMPLE_SETTINGS, env={})
        assert settings.ports.chosen()["ingest_http"] == 7460
