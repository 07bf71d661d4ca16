from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from dicom_node.config import DEFAULT_MODEL, ConfigError, Destination, NodeConfig, Route, load_config
from inference.model_card import find_card

PROJECT = Path(__file__).resolve().parents[2]


def test_default_file_gives_documented_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPINENODE_CONFIG", raising=False)
    cfg = load_config()
    assert cfg == NodeConfig()  # config/node.toml repeats the defaults in config.py
    assert cfg.model == DEFAULT_MODEL == "spinenode-deeplabv3plus-dense"
    assert not find_card(cfg.model, PROJECT / "models").demo  # trained on real radiographs, not phantoms
    assert cfg.db_path == Path("var/spinenode.db")


def test_flags_override_file(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text(
        '[node]\nae_title = "FROMFILE"\nport = 2000\ndestinations = ["PACS@pacs.local:104"]\n'
        "[retry]\ninitial_s = 1.0\nmax_s = 2.0\n"
    )
    cfg = load_config(f, port=3000, ae_title=None)
    assert cfg.ae_title == "FROMFILE" and cfg.port == 3000
    assert cfg.destinations == (Destination("PACS", "pacs.local", 104),)
    assert (cfg.retry_initial_s, cfg.retry_max_s) == (1.0, 2.0)


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "n.toml"
    f.write_text('[node]\nae_title = "ENVNODE"\n')
    monkeypatch.setenv("SPINENODE_CONFIG", str(f))
    assert load_config().ae_title == "ENVNODE"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[node]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n', "invalid AE title"),
        ("[node]\nunknown_key = 1\n", "unknown [node] keys"),
        ('[node]\ndestinations = ["nonsense"]\n', "AE@HOST:PORT"),
        ("[node\n", "n.toml"),
        ("[metrics]\nalert_below = 1.5\n", "metrics settings"),
        ("[metrics]\nwindow = 5\n", "unknown [metrics] keys"),
        ('[node]\ndefault_character_set = "latin1"\n', "not a DICOM character set"),
        ('[node]\nflip_agreement = "no"\n', "[node] flip_agreement = 'no': expected true or false, not str"),
        ('[node]\nmax_backlog = "lots"\n', "[node] max_backlog = 'lots': expected an integer"),
        ('[node]\nport = "11112"\n', "[node] port = '11112': expected an integer"),
        ("[node]\nworkers = true\n", "[node] workers = True: expected an integer, not bool"),
        ('[retry]\ninitial_s = "5"\n', "[retry] initial_s = '5': expected a number"),
        ("[tls]\nrequire_client_cert = 1\n", "[tls] require_client_cert = 1: expected true or false"),
        ('[node]\nallowed_calling_aes = "MODALITY"\n', "[node] allowed_calling_aes must be list"),
        ("[[routes]]\ndestinations = []\n", "[[routes]] #1: model is required"),
        ('[retention]\nenabled = "yes"\n', "[retention] enabled = 'yes': expected true or false"),
        ("[retention]\nwarn_free_disk_mb = 100\n", "the warning must come before the refusal"),
        ("[retention]\ninstances_days = -1\n", "need instances_days >= 0"),
        ("[retention]\nkeep = 3\n", "unknown [retention] keys: keep"),
        ('[[routes]]\nmodel = "m"\nmodalty = "DX"\n', "unknown [[routes]] #1 keys: modalty"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "n.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(f)


def test_numbers_are_numbers_of_the_expected_kind(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text("[node]\ndecode_timeout_s = 5\n")
    cfg = load_config(f)
    assert cfg.decode_timeout_s == 5.0 and isinstance(cfg.decode_timeout_s, float)


def test_routes_match_in_order_then_default(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text(
        '[node]\nmodel = "default-model"\n'
        '[[routes]]\nmodality = "CR"\ncalling_ae = "ROOM2"\nmodel = "cr-model"\ndestinations = ["A@h:1"]\n'
        '[[routes]]\nview_position = "PA"\nmodel = "pa-model"\n'
    )
    cfg = load_config(f)
    assert cfg.route_for("SPINENODE", "ROOM2", "CR", "SPINE", "AP").model == "cr-model"
    assert cfg.route_for("SPINENODE", "ROOM2", "DX", "SPINE", "pa").model == "pa-model"  # case-insensitive
    assert cfg.route_for("SPINENODE", "OTHER", "CR", "", "").model == "default-model"
    assert Route("m").matches("X", "Y", "", "", "")


def test_a_route_may_turn_the_flip_agreement_off(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text('[[routes]]\ncalling_ae = "FAST"\nmodel = "m"\nflip_agreement = false\n')
    cfg = load_config(f)
    assert cfg.route_for("SPINENODE", "FAST", "", "", "").flip_agreement is False
    assert cfg.route_for("SPINENODE", "OTHER", "", "", "").flip_agreement is None  # the node's setting
    f.write_text('[[routes]]\nmodel = "m"\nflip_agreement = "off"\n')
    with pytest.raises(ConfigError, match="flip_agreement must be bool"):
        load_config(f)


def test_workers_auto_is_one_worker_process_per_core(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text("[node]\nworkers = 3\n")
    assert (load_config(f).workers, load_config(f).worker_processes) == (3, 0)  # threads of this process
    cores = os.cpu_count() or 1
    cfg = load_config(f, workers="auto")  # --workers auto
    assert (cfg.workers, cfg.worker_processes) == (1, cores)  # one single-thread process per core
    f.write_text('[node]\nworker_processes = "auto"\n')
    assert load_config(f).worker_processes == cores
    f.write_text("[node]\nworker_processes = 2\nworkers = 2\n")
    assert (load_config(f).workers, load_config(f).worker_processes) == (2, 2)
    f.write_text('[node]\nworker_processes = "many"\n')
    with pytest.raises(ConfigError, match="worker_processes = 'many': expected an integer"):
        load_config(f)
