"""The `ingest` settings section (onefold.ingest.settings), loaded as `python -m onefold.ingest`
loads it: defaults, then onefold.yaml, then `ONEFOLD_INGEST__<KEY>`; bad values are one sentence."""

from pathlib import Path

import pytest

from onefold.ingest.settings import IngestSettings
from onefold.platform.config import ConfigError, load_settings


def ingest_settings(config: Path | None = None, env: dict[str, str] | None = None) -> IngestSettings:
    settings = load_settings("ingest", config, env=env or {}, sections=[IngestSettings])
    return settings.section(IngestSettings)


def test_ingest_section_from_file_and_environment(tmp_path: Path) -> None:
    defaults = ingest_settings()
    assert defaults.dedupe_window_seconds == 24 * 3600
    assert defaults.default_rate_limit_per_second == 1000
    assert (defaults.max_group_events, defaults.linger_seconds) == (5000, 0.0005)

    config = tmp_path / "onefold.yaml"
    config.write_text(
        "ingest:\n  dedupe_window_seconds: 7200\n  max_group_events: 200\n  linger_seconds: 0\n"
    )
    settings = ingest_settings(
        config,
        env={
            "ONEFOLD_INGEST__DEDUPE_WINDOW_SECONDS": "3600",
            "ONEFOLD_INGEST__DEFAULT_RATE_LIMIT_PER_SECOND": "2.5",
        },
    )
    assert settings.dedupe_window_seconds == 3600  # environment beats the file
    assert settings.default_rate_limit_per_second == 2.5
    assert (settings.max_group_events, settings.linger_seconds) == (200, 0)


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
        ingest_settings(env={f"ONEFOLD_INGEST__{key.upper()}": value})
    message = str(caught.value)
    assert message.startswith(f"invalid configuration value for 'ingest.{key}' in defaults and environment: ")
    assert "\n" not in message


def test_bad_ingest_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "onefold.yaml"
    config.write_text("ingest:\n  default_rate_limit_per_second: -5\n")
    with pytest.raises(ConfigError) as caught:
        ingest_settings(config)
    assert str(caught.value) == (
        f"invalid configuration value for 'ingest.default_rate_limit_per_second' in {config} "
        "(or ONEFOLD_* environment): Input should be greater than 0"
    )
    config.write_text("ingest:\n  dedupe_window: 60\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'ingest\.dedupe_window'"):
        ingest_settings(config)


def test_a_shared_file_with_an_ingest_section_loads_in_the_other_services(tmp_path: Path) -> None:
    config = tmp_path / "onefold.yaml"
    config.write_text("ingest:\n  dedupe_window_seconds: 7200\n  max_group_events: 200\n")
    for service in ("identity", "consent", "segments", "journeys", "destinations"):
        assert load_settings(service, config, env={}).service == service
