"""Drop-in torch.nn modules backed by fastdrop's kernels (imports torch)."""
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]
