"""Site file and credentials file parsing (pure logic, files in tmp_path)."""

from __future__ import annotations

import pytest

from relion_zo.config import ConfigError, load_config
from relion_zo.db import CredentialsError, url_from_credentials


def test_relative_paths_are_taken_from_the_site_file(tmp_path):
    site = tmp_path / "etc" / "site.yaml"
    site.parent.mkdir()
    site.write_text(
        "data_roots: [../data]\nvisit_directory: '{data_root}/{year}/{visit}'\n"
        "ispyb_credentials: ispyb.ini\nheartbeat_seconds: 4\nstale_heartbeats: 5\n"
    )
    config = load_config(site)
    assert config.data_roots == [tmp_path / "data"]
    assert config.ispyb_credentials == tmp_path / "etc" / "ispyb.ini"
    assert config.stale_seconds == 20


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("data_roots: []\nvisit_directory: x\n", "data_roots"),
        ("data_roots: [/d]\nvisit_directory: x\nheartbeat_seconds: -1\n", "heartbeat_seconds"),
        ("data_roots: [/d]\nvisit_directory: x\npassword: secret\n", "password"),
        ("data_roots: [/d\n", "not valid YAML"),
    ],
)
def test_bad_site_files(tmp_path, text, words):
    site = tmp_path / "site.yaml"
    site.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config(site)


def test_no_site_file(monkeypatch, tmp_path):
    monkeypatch.delenv("RELION_ZO_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="RELION_ZO_CONFIG"):
        load_config()
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_credentials_url_keeps_awkward_passwords(tmp_path):
    ini = tmp_path / "ispyb.ini"
    ini.write_text(
        "[ispyb_sqlalchemy]\nusername = u\npassword = p@ss/w:rd%\nhost = 127.0.0.1\n"
        "port = 3307\ndatabase = ispyb\n"
    )
    url = url_from_credentials(ini)
    assert url.password == "p@ss/w:rd%" and url.port == 3307 and url.drivername == "mysql+mysqldb"


def test_credentials_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("ISPYB_CREDENTIALS", raising=False)
    with pytest.raises(CredentialsError, match="ISPYB_CREDENTIALS"):
        url_from_credentials()
    ini = tmp_path / "ispyb.ini"
    ini.write_text("[other]\nusername = u\n")
    with pytest.raises(CredentialsError, match="ispyb_sqlalchemy"):
        url_from_credentials(ini)
