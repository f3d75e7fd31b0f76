"""An example initializer of a WorkspaceType, written against the initializingworkspaces virtual workspace (README.md)."""

from examples.initializer_controller.controller import (CONFIGMAP, NAMESPACE, InitializerController,
                                                        InitializingWorkspacesWatcher, workspace_cluster)

__all__ = ["CONFIGMAP", "NAMESPACE", "InitializerController", "InitializingWorkspacesWatcher", "workspace_cluster"]
