"""MTCNN face detection (task "detection"); see README.md."""

from plugins.mtcnn_faces.plugin import make_plugin

__all__ = ["make_plugin"]
