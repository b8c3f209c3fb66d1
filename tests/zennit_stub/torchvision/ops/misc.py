from torchvision._stand_in import missing_names

__getattr__ = missing_names(__name__)
