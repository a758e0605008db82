"""kiln's rule-based CPU schedules, most specific first (the first rule that accepts a kernel wins)."""

from schedules.rules.elementwise import Injective, ParallelFallback
from schedules.rules.int8 import Int8Tensorized
from schedules.rules.reduction import ChannelVectorized, RowReduction, SpatialVectorized
from schedules.rules.softmax import RowSoftmax
from schedules.rules.stem_conv import StemConv

__all__ = ["RowSoftmax", "Int8Tensorized", "StemConv", "ChannelVectorized", "SpatialVectorized", "Injective", "RowReduction", "ParallelFallback"]
