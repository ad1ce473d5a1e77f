"""The data config rejects what it would otherwise silently ignore (issue 12)."""

from __future__ import annotations

import pytest

from jaxpretrain.curate import config as data_config


def test_misspelled_nested_key_names_the_nearest_valid_key():
    cfg = data_config.default_data_config()
    cfg.split.validaton_fraction = 0.2  # a typo in a data config file: used to be ignored
    with pytest.raises(ValueError, match=r"split\.validaton_fraction.*split\.validation_fraction"):
        data_config.validate_data_config(cfg)


def test_misspelled_top_level_section_names_the_nearest_valid_key():
    cfg = data_config.default_data_config()
    cfg.dedupe = {"exact": False}
    with pytest.raises(ValueError, match=r"'dedupe'.*did you mean 'dedup'"):
        data_config.validate_data_config(cfg)


def test_key_far_from_every_valid_key_lists_the_valid_ones():
    cfg = data_config.default_data_config()
    cfg.output.zzz = 1
    with pytest.raises(ValueError, match=r"output\.zzz.*valid keys of output"):
        data_config.validate_data_config(cfg)


def test_filter_settings_may_name_any_registered_filter():
    cfg = data_config.default_data_config()
    cfg.filters.settings.gopher_quality = {"min_words": 10}
    data_config.validate_data_config(cfg)  # open section: keys are filter names, checked there


def test_unknown_setting_of_a_filter_is_rejected():
    cfg = data_config.default_data_config()
    cfg.filters.settings.gopher_quality = {"min_wrods": 10}
    with pytest.raises(ValueError, match="gopher_quality"):
        data_config.validate_data_config(cfg)
