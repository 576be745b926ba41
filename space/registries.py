"""The registries every test, space and driver finds its components through.

Each registry has one constructor signature; modules register themselves on import
(``space.ops`` imports every module file of the package).
"""
from .registry import Registry

OPS = Registry("op", "(C_in: int, C_out: int, stride: int, **kw) -> nn.Module; forward(x) -> y "
               "with C_out channels and ceil(H/stride) x ceil(W/stride) resolution")
FUSIONS = Registry("fusion", "(C: int, **kw) -> nn.Module; forward(x, y) -> tensor shaped like x")
ATTENTIONS = Registry("attention", "(C: int, **kw) -> nn.Module; forward(x) -> same shape; "
                      "a plug-in applied after a conv")
TOKEN_MIXERS = Registry("token mixer", "(dim: int, **kw) -> nn.Module; forward(x: B,C,H,W) -> same shape")
CHANNEL_MIXERS = Registry("channel mixer", "(dim: int, mlp_ratio: float, **kw) -> nn.Module; "
                          "forward(x: B,C,H,W) -> same shape")
DW_CONVS = Registry("depthwise conv", "(C: int, kernel_size: int, stride: int, **kw) -> nn.Module; "
                    "a depthwise (groups=C) conv variant: forward(x: B,C,H,W) -> B,C,H/s,W/s")
SPACES = Registry("search space", "class with choices/decode/build/parts/supernet")
