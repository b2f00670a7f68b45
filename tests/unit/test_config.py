"""Settings (SPEC §6): defaults, environment, TOML file, errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import load_settings
from tasks.core.commit import WindowSize
from tasks.errors import InvalidInput


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("WALBACKUP_"):
            monkeypatch.delenv(name)


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    s = load_settings()
    assert s.node_id is None and s.workdir is None
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.effective_broker_url == s.redis_url
    assert s.effective_remote_storage == (tmp_path / "walbackup" / "remote").as_uri()
    assert s.s3_endpoint_url is None
    assert s.parallel_jobs == 5
    assert s.reorder_horizon == 4 and s.window == WindowSize(5, 20)
    assert s.max_offloader_lag_bytes == 134217728
    assert s.wal_seg_size == 16 * 1024 * 1024
    assert s.heartbeat_timeout == 5
    assert s.election_interval == 1
    assert s.backup_enabled is True
    assert s.metrics_port is None
    assert s.wal_header_check is True


def test_environment_sets_every_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "WALBACKUP_NODE_ID": "3",
        "WALBACKUP_WORKDIR": str(tmp_path),
        "WALBACKUP_REDIS_URL": "redis://10.0.0.1:6380/2",
        "WALBACKUP_BROKER_URL": "redis://10.0.0.1:6380/3",
        "WALBACKUP_REMOTE_STORAGE": "s3://bucket/prefix",
        "WALBACKUP_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "WALBACKUP_PARALLEL_JOBS": "8",
        "WALBACKUP_REORDER_HORIZON": "2",
        "WALBACKUP_MAX_OFFLOADER_LAG_BYTES": "1048576",
        "WALBACKUP_WAL_SEG_SIZE": "1073741824",
        "WALBACKUP_HEARTBEAT_TIMEOUT": "2.5",
        "WALBACKUP_ELECTION_INTERVAL": "0.5",
        "WALBACKUP_BACKUP_ENABLED": "false",
        "WALBACKUP_METRICS_PORT": "9187",
        "WALBACKUP_WAL_HEADER_CHECK": "false",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert (s.node_id, s.workdir, s.parallel_jobs, s.metrics_port) == (3, tmp_path, 8, 9187)
    assert s.effective_broker_url == "redis://10.0.0.1:6380/3"
    assert s.effective_remote_storage == "s3://bucket/prefix"
    assert s.wal_seg_size == 1 << 30 and s.max_offloader_lag_bytes == 1 << 20
    assert (s.heartbeat_timeout, s.election_interval, s.backup_enabled) == (2.5, 0.5, False)
    assert s.wal_header_check is False
    assert s.window == WindowSize(8, 16)


def test_broker_may_be_rabbitmq_but_redis_url_may_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALBACKUP_BROKER_URL", "amqp://u:p@mq:5672/walbackup")
    s = load_settings()
    assert s.effective_broker_url == "amqp://u:p@mq:5672/walbackup"
    assert not s.broker_is_redis
    monkeypatch.setenv("WALBACKUP_REDIS_URL", "amqp://u:p@mq:5672/walbackup")
    with pytest.raises(InvalidInput, match="WALBACKUP_REDIS_URL"):
        load_settings()
    monkeypatch.setenv("WALBACKUP_BROKER_URL", "http://mq")
    with pytest.raises(InvalidInput, match="WALBACKUP_BROKER_URL"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WALBACKUP_PARALLEL_JOBS", "0"),
        ("WALBACKUP_PARALLEL_JOBS", "many"),
        ("WALBACKUP_REORDER_HORIZON", "0"),
        ("WALBACKUP_WAL_SEG_SIZE", "1000000"),
        ("WALBACKUP_WAL_SEG_SIZE", str(2 << 30)),
        ("WALBACKUP_NODE_ID", "-1"),
        ("WALBACKUP_HEARTBEAT_TIMEOUT", "0"),
        ("WALBACKUP_METRICS_PORT", "70000"),
        ("WALBACKUP_REDIS_URL", "http://localhost"),
        ("WALBACKUP_BACKUP_ENABLED", "perhaps"),
        ("WALBACKUP_WAL_HEADER_CHECK", "sometimes"),
        ("WALBACKUP_MAX_OFFLOADER_LAG_BYTES", "-5"),
        ("WALBACKUP_S3_SSE", "aes256"),
        ("WALBACKUP_S3_SSE", "aws:kms:dsse"),
        ("WALBACKUP_S3_SSE", ""),
        ("WALBACKUP_S3_SSE_KMS_KEY_ID", "alias/wal"),  # without WALBACKUP_S3_SSE=aws:kms
        ("WALBACKUP_RETAIN_KEEP_SEGMENTS", "0"),
        ("WALBACKUP_REDIS_URL", "redis://admin:pw@127.0.0.1:notaport/0"),
        ("WALBACKUP_REDIS_URL", "redis://127.0.0.1:99999/0"),
        ("WALBACKUP_REDIS_URL", "redis://127.0.0.1:6379/abc"),  # redis-py would use db 0
        ("WALBACKUP_BROKER_URL", "amqp://guest:guest@localhost:x/"),
        ("WALBACKUP_S3_ENDPOINT_URL", "notaurl"),
        ("WALBACKUP_BROKER_URL", "unix:///run/redis.sock"),
        ("WALBACKUP_S3_ENDPOINT_URL", "http://"),
        ("WALBACKUP_REMOTE_STORAGE", "s3://"),
        ("WALBACKUP_REMOTE_STORAGE", "s3:///prefix"),
        ("WALBACKUP_REMOTE_STORAGE", "s3://Bad_Bucket/wal"),
        ("WALBACKUP_REMOTE_STORAGE", "ftp://x/y"),
        ("WALBACKUP_REMOTE_STORAGE", "/just/a/path"),
        ("WALBACKUP_REMOTE_STORAGE", "file://relative/path"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInput, match=name):
        load_settings()


def test_server_side_encryption(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.s3_sse, s.s3_sse_kms_key_id, s.retain_keep_segments) == (None, None, 1)
    monkeypatch.setenv("WALBACKUP_S3_SSE", "AES256")
    assert load_settings().s3_sse == "AES256"
    monkeypatch.setenv("WALBACKUP_S3_SSE_KMS_KEY_ID", "alias/wal")
    with pytest.raises(InvalidInput, match=r"WALBACKUP_S3_SSE_KMS_KEY_ID: .*aws:kms"):
        load_settings()
    monkeypatch.setenv("WALBACKUP_S3_SSE", "aws:kms")
    s = load_settings()
    assert (s.s3_sse, s.s3_sse_kms_key_id) == ("aws:kms", "alias/wal")


def test_node_id_requires_workdir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALBACKUP_NODE_ID", "1")
    with pytest.raises(InvalidInput, match="WALBACKUP_WORKDIR"):
        load_settings()


def test_toml_file_adds_keys_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "walbackup.toml"
    config.write_text('parallel_jobs = 7\nremote_storage = "file:///srv/wal"\n')
    monkeypatch.setenv("WALBACKUP_CONFIG_FILE", str(config))
    assert load_settings().parallel_jobs == 7
    assert load_settings().effective_remote_storage == "file:///srv/wal"
    monkeypatch.setenv("WALBACKUP_PARALLEL_JOBS", "2")
    assert load_settings().parallel_jobs == 2


def test_a_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WALBACKUP_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(InvalidInput, match=r"WALBACKUP_CONFIG_FILE: .*nope.toml does not exist"):
        load_settings()


def test_a_toml_syntax_error_is_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "walbackup.toml"
    config.write_text("parallel_jobs = = 7\n")
    monkeypatch.setenv("WALBACKUP_CONFIG_FILE", str(config))
    with pytest.raises(InvalidInput, match=r"walbackup.toml is not valid TOML: .*line 1"):
        load_settings()


def test_a_unix_socket_redis_needs_a_broker_url_celery_can_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WALBACKUP_REDIS_URL", "unix:///run/redis.sock?db=2")
    with pytest.raises(InvalidInput, match="WALBACKUP_BROKER_URL: required when"):
        load_settings()
    monkeypatch.setenv("WALBACKUP_BROKER_URL", "redis+socket:///run/redis.sock?virtual_host=2")
    assert load_settings().effective_broker_url.startswith("redis+socket://")


def test_a_bad_url_is_named_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALBACKUP_REDIS_URL", "redis://ad:pa@ss@127.0.0.1:notaport/0")
    with pytest.raises(InvalidInput, match="WALBACKUP_REDIS_URL") as caught:
        load_settings()
    assert "pa@ss" not in str(caught.value) and "ss@127" not in str(caught.value)
    assert "Value error" not in str(caught.value)


def test_a_key_of_the_file_that_is_no_setting_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "walbackup.toml"
    monkeypatch.setenv("WALBACKUP_CONFIG_FILE", str(config))
    config.write_text('paralel_jobs = 3\nremote_storge = "s3://wal"\n')
    with pytest.raises(InvalidInput, match=r"walbackup.toml: 'paralel_jobs' is not a setting "
                       r"\(did you mean 'parallel_jobs'\?\); 'remote_storge'"):  # fmt: skip
        load_settings()
    config.write_text("WALBACKUP_PARALLEL_JOBS = 3\n")
    with pytest.raises(InvalidInput, match=r"the key is 'parallel_jobs' \(no prefix\)"):
        load_settings()


def test_a_variable_that_is_no_setting_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WALBACKUP_REMOTE_STORGE", "s3://wal")
    monkeypatch.setenv("WALBACKUP_TEST_S3_ENDPOINT", "http://127.0.0.1:1")  # the tests' own
    monkeypatch.setenv("WALBACKUP_PARALLEL_JOBS", "3")
    with caplog.at_level("WARNING", logger="walbackup.config"):
        assert load_settings().parallel_jobs == 3
    assert [r.getMessage() for r in caplog.records] == [
        "WALBACKUP_REMOTE_STORGE is not a setting (did you mean WALBACKUP_REMOTE_STORAGE?): ignored"
    ]


def test_redis_through_sentinels(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.sentinels == [] and s.broker_sentinel_options == {}
    monkeypatch.setenv("WALBACKUP_REDIS_URL", "redis://:secret@ignored:1/2")
    monkeypatch.setenv("WALBACKUP_REDIS_SENTINELS", "10.0.0.1:26379, [::1]:26380")
    monkeypatch.setenv("WALBACKUP_REDIS_MASTER_NAME", "wal")
    s = load_settings()
    assert s.sentinels == [("10.0.0.1", 26379), ("::1", 26380)]
    # kombu's convention: one sentinel:// URL per Sentinel, the first with
    # the master's password (Celery masks it there), the master's name apart.
    assert s.effective_broker_url == "sentinel://:secret@10.0.0.1:26379/2;sentinel://[::1]:26380/2"
    timeouts = {"socket_timeout": 5, "socket_connect_timeout": 5}
    assert s.broker_sentinel_options == {"master_name": "wal", "sentinel_kwargs": timeouts}
    assert "secret" not in s.redis_where and "wal" in s.redis_where
    monkeypatch.setenv("WALBACKUP_REDIS_SENTINEL_PASSWORD", "sp")
    options = load_settings().broker_sentinel_options
    assert options["sentinel_kwargs"] == {**timeouts, "password": "sp"}
    # A broker of its own is reached directly.
    monkeypatch.setenv("WALBACKUP_BROKER_URL", "redis://10.0.0.9:6379/0")
    s = load_settings()
    assert s.effective_broker_url == "redis://10.0.0.9:6379/0" and not s.broker_sentinel_options


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WALBACKUP_REDIS_SENTINELS": "10.0.0.1"}, "WALBACKUP_REDIS_SENTINELS: .*host:port"),
        ({"WALBACKUP_REDIS_SENTINELS": "h:1,h:x"}, "WALBACKUP_REDIS_SENTINELS: .*'h:x'"),
        ({"WALBACKUP_REDIS_SENTINELS": "h:70000"}, "WALBACKUP_REDIS_SENTINELS"),
        ({"WALBACKUP_REDIS_SENTINELS": "h:26379"}, "WALBACKUP_REDIS_MASTER_NAME"),
        ({"WALBACKUP_REDIS_MASTER_NAME": "wal"}, "WALBACKUP_REDIS_SENTINELS"),
        (
            {
                "WALBACKUP_REDIS_SENTINELS": "h:26379",
                "WALBACKUP_REDIS_MASTER_NAME": "wal",
                "WALBACKUP_REDIS_URL": "rediss://h:6379/0",
            },
            "WALBACKUP_REDIS_URL: must be a redis:// URL",
        ),
    ],
)
def test_sentinel_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInput, match=message):
        load_settings()
