"""Typed configuration: defaults, TOML files, flags, and the errors for each kind of mistake."""

from __future__ import annotations

import pytest

from pyro_vae.config import Config, ConfigError, load_config


def test_defaults_validate_and_round_trip_through_toml(tmp_path):
    c = Config().validate()
    p = tmp_path / "c.toml"
    p.write_text(c.to_toml())
    assert load_config(p) == c


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('latent_dim = 8\nhidden = [32, 16]\nlr = 1\nprior = "vamp"\n')
    c = load_config(p, {"latent_dim": 4})
    assert (c.latent_dim, c.hidden, c.prior) == (4, [32, 16], "vamp")
    assert isinstance(c.lr, float) and c.lr == 1.0  # an int is accepted where a float is declared


@pytest.mark.parametrize(
    "text, match",
    [
        ("latnet_dim = 3\n", "unknown config key 'latnet_dim'.*did you mean 'latent_dim'"),
        ('latent_dim = "8"\n', "latent_dim must be an integer"),
        ("latent_dim = 2.5\n", "latent_dim must be an integer"),
        ("download = 1\n", "download must be true or false"),
        ("hidden = 400\n", "hidden must be a list"),
        ('hidden = ["a"]\n', "hidden must be an integer"),
        ("[model]\nlatent_dim = 3\n", "tables"),
        ("latent_dim = \n", "not valid TOML"),
        ('prior = "gaussian"\n', "prior = 'gaussian' is not one of"),
        ("latent_dim = 0\n", "latent_dim must be >= 1"),
        ("lr = 0\n", "lr must be > 0"),
        ('binarize = "none"\n', "bernoulli.*binarize.*continuous_bernoulli"),
        ('decoder = "poisson"\n', "pixel_scale = 'uint8'"),
        ('pixel_scale = "uint8"\n', "binarize needs pixel_scale"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, {"epoch": 3})
