"""register_head: a head type written for the all-in-one contract before the split is refused by
name, never registered with its members silently ignored."""

from dataclasses import dataclass

import pytest

from headkit.errors import HeadConfigError
from headkit.heads import REGISTRY, HeadBase, HeadConfig, register_head


@dataclass(frozen=True)
class OldConfig(HeadConfig):
    type: str = "old"

    def fit_backbone(self, backbone_config) -> None:  # the in-place fill of before
        pass


class OldHead(HeadBase):
    primary_metric = "accuracy"  # now scoring.primary
    crop_ok = False  # now codec.crop_ok

    def for_text(self, prediction, encoding, text):  # now view.for_text
        return prediction


def test_a_head_type_of_the_old_contract_is_refused_naming_each_members_part():
    with pytest.raises(HeadConfigError) as refused:
        register_head("old", OldConfig, OldHead)
    message = str(refused.value)
    for said in ("crop_ok -> codec", "for_text -> view", "primary_metric -> scoring", "fit_backbone -> the config's"):
        assert said in message
    assert "old" not in REGISTRY


def test_every_built_in_head_type_passes_the_same_check():
    for head_type, (config_class, head_class) in list(REGISTRY.items()):
        register_head(head_type, config_class, head_class)  # the same entry again: checked, accepted
