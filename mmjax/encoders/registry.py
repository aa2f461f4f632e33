"""The encoder registry (a separate module so encoder files can import it)."""
from mmjax.registry import Registry

ENCODERS = Registry("encoder")
register = ENCODERS.register
