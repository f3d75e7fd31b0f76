"""A fake syncer for the syncer virtual workspace: it runs placed Deployments by reporting them ready (README.md)."""

from examples.fake_syncer.syncer import FakeSyncer, TargetView, report

__all__ = ["FakeSyncer", "TargetView", "report"]
