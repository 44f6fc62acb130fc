"""Platform data for ETV prediction: the data contract, a synthetic platform, and real spend data."""

from eoca.data.cdnow import cdnow_path, load_cdnow
from eoca.data.errors import DataValidationError
from eoca.data.platform import PlatformData
from eoca.data.randhie import load_randhie, randhie_path
from eoca.data.synthetic import SyntheticPlatform, synthetic_platform

__all__ = [
    "PlatformData",
    "DataValidationError",
    "SyntheticPlatform",
    "synthetic_platform",
    "load_cdnow",
    "cdnow_path",
    "load_randhie",
    "randhie_path",
]
