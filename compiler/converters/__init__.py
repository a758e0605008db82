"""ONNX operators kiln converts to Relax itself, where TVM's Relax importer has no converter.

``CONVERTERS`` maps an ONNX op type of the default domain, ``CONTRIB_CONVERTERS`` one of ONNX
Runtime's ``com.microsoft`` domain, to a TVM ``OnnxOpConverter`` class; ``compiler.importer``
consults them before TVM's own map.
"""

from compiler.converters.dynamic_quant import (ConvInteger, DynamicQuantizeLinear, DynamicQuantizeLSTM,
                                               DynamicQuantizeMatMul, MatMulInteger, MatMulIntegerToFloat)
from compiler.converters.recurrent import GRU, LSTM, RNN

CONVERTERS = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN, "DynamicQuantizeLinear": DynamicQuantizeLinear,
              "MatMulInteger": MatMulInteger, "ConvInteger": ConvInteger}
CONTRIB_DOMAIN = "com.microsoft"
CONTRIB_CONVERTERS = {"MatMulIntegerToFloat": MatMulIntegerToFloat, "DynamicQuantizeMatMul": DynamicQuantizeMatMul,
                      "DynamicQuantizeLSTM": DynamicQuantizeLSTM}
