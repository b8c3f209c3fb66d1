"""Stand-in for torchvision.models.vision_transformer, which lxt imports at import time (for its
torchvision ViT patches, which the tests do not use): `nn` is torch.nn."""
from torch import nn  # noqa: F401
from torch.nn import *  # noqa: F401,F403
