"""ONNX operators kiln converts to Relax itself, where TVM's Relax importer has no converter.

``CONVERTERS`` maps an ONNX op type (default domain) to a TVM ``OnnxOpConverter`` class;
``compiler.importer`` consults it before TVM's own map.
"""

from compiler.converters.recurrent import GRU, LSTM, RNN

CONVERTERS = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}
