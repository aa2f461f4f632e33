"""The fusion-block registry (a separate module so block files can import it)."""
from mmjax.registry import Registry

FUSION = Registry("fusion block")
register = FUSION.register
