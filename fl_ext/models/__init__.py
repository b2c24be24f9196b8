"""Small PyTorch models for the offline image datasets."""

from fl_ext.models.nets import MLP, ClassifierNet, SmallCNN

__all__ = ["MLP", "ClassifierNet", "SmallCNN"]
