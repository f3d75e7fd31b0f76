"""An example controller of an exported API, written against the apiexport virtual workspace (see README.md)."""

from examples.widget_controller.controller import WidgetController, WidgetReconciler

__all__ = ["WidgetController", "WidgetReconciler"]
