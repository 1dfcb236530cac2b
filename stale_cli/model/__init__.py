"""The STALE model (paper §3.2) and its losses (§3.3). Import the submodules; nothing is built at import time."""
