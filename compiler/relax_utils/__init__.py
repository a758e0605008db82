"""Helpers kiln's passes and pipeline share, which are not passes themselves.

- ``fused_groups``: reading and rebuilding the kernel groups ``FuseOps`` leaves for ``FuseTIR``;
- ``rewrite``: running an expression mutator over every Relax function of a module;
- ``blocked_conv``, ``row_softmax``: kiln's own ``LegalizeOps`` entries (blocked-channel
  convolutions, a vectorizable last-axis softmax) and what decides where they apply.

The passes themselves live in ``compiler.passes``.
"""
