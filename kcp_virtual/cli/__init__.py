"""Client-side commands of ``kcp`` that only talk to servers (no ``server`` import)."""
