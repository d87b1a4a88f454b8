"""Label codecs, one per label layout, shared by the head types that store labels that way
(base.py says what a codec does)."""

from headkit.heads.codecs.base import Codec
from headkit.heads.codecs.index import IndexCodec
from headkit.heads.codecs.pair import PairCodec, TextPairCodec
from headkit.heads.codecs.per_token import TagCodec
from headkit.heads.codecs.sequence import TextCodec
from headkit.heads.codecs.vector import LabelSetCodec, TargetCodec

__all__ = ["Codec", "IndexCodec", "LabelSetCodec", "PairCodec", "TagCodec", "TargetCodec", "TextCodec", "TextPairCodec"]
