"""Toy ops whose effect on accuracy is known by construction, for the module-verdict machinery
(tests/test_verdicts.py) and its measurement under the default estimator (bench/toy_verdict.py)."""
from contextlib import contextmanager

from torch import nn

from space.registry import OPS

TOY_OPS = ["skip_connect", "sep_conv_3x3", "zz_harmful", "zz_neutral"]


class Zeroes(nn.Module):
    """A separable conv whose output is multiplied by zero: harmful by construction."""

    def __init__(self, C_in, C_out, stride):
        super().__init__()
        self.inner = OPS["sep_conv_3x3"](C_in, C_out, stride)

    def forward(self, x):
        return self.inner(x) * 0.0


@contextmanager
def toy_ops():
    OPS.register("zz_harmful", lambda C_in, C_out, stride, **kw: Zeroes(C_in, C_out, stride), tags={"conv"})
    # the same module as its plain counterpart under another name: neutral by construction
    OPS.register("zz_neutral", lambda C_in, C_out, stride, **kw: OPS["sep_conv_3x3"](C_in, C_out, stride),
                 tags={"conv"})
    try:
        yield
    finally:
        OPS.remove("zz_harmful")
        OPS.remove("zz_neutral")
