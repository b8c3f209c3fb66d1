from torchvision._stand_in import missing_names
from torchvision.transforms.functional import InterpolationMode  # noqa: F401

__getattr__ = missing_names(__name__)
