"""wandb logger factory: never prompts, offline without credentials, one run id per run directory."""

from __future__ import annotations

import os

import pytest

from prism.training.loggers import wandb_logger, wandb_offline_from_environment


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No API key in the environment and a home without ~/.netrc."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path


def test_offline_without_credentials(no_credentials):
    assert wandb_offline_from_environment() is True


def test_online_with_an_api_key(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_offline_from_environment() is False


def test_netrc_counts_as_credentials(no_credentials):
    netrc = no_credentials / "home" / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_offline_from_environment() is False


@pytest.mark.parametrize("mode, offline", [("offline", True), ("disabled", True), ("dryrun", True), ("online", False), (" Offline ", True)])
def test_wandb_mode_wins(no_credentials, monkeypatch, mode, offline):
    monkeypatch.setenv("WANDB_MODE", mode)
    assert wandb_offline_from_environment() is offline


def test_empty_wandb_mode_counts_as_unset_and_is_removed(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")
    assert wandb_offline_from_environment() is True
    assert "WANDB_MODE" not in os.environ  # wandb itself fails on an empty value


def test_unknown_wandb_mode_is_refused_with_the_choices(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ValueError, match="ofline.*offline"):
        wandb_offline_from_environment()


def test_run_id_is_kept_per_run_directory(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")
    save_dir = no_credentials / "run"
    first = wandb_logger(str(save_dir), name="a")
    second = wandb_logger(str(save_dir), name="a")
    assert (save_dir / "wandb_run_id").read_text().strip() == first.version == second.version
    assert wandb_logger(str(no_credentials / "other_run")).version != first.version
