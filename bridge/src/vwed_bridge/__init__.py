"""Feed vwed-hub from an existing VWED database, without changing the engines that write it.

One poll for the whole site reads what changed (a cursor per table), the publisher SDK
publishes it to the hubs, and the hubs' snapshot requests are answered from the database with
revs that make every hub's merge exact. :mod:`vwed_bridge.changes` decides what to publish and
holds no I/O; :mod:`vwed_bridge.bridge` does the reading, publishing and answering.
"""

from .bridge import Bridge, Settings
from .config import LocationSource, Sources, TaskSource, load_sources

__version__ = "0.1.0"

__all__ = ["Bridge", "LocationSource", "Settings", "Sources", "TaskSource", "load_sources"]
