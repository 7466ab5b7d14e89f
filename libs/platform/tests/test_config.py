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
