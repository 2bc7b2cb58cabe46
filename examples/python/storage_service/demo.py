"""A demo scene, seeded into an empty database so that there is something to watch at once."""

from __future__ import annotations

from vwed_publisher import StorageLocation, timestamp_now


def demo_locations(scene_id: str) -> list[StorageLocation]:
    """Two storage areas of four stations each, four layers per station: 32 locations."""
    now = timestamp_now()
    locations = []
    for area, stations in (("A1", range(1, 5)), ("A2", range(5, 9))):
        for station in stations:
            for layer in range(1, 5):
                occupied = (station + layer) % 3 == 0
                locations.append(
                    StorageLocation(
                        id=f"{scene_id}-ST{station}-{layer}",
                        layer_index=layer,
                        layer_name=f"ST{station}-L{layer}",
                        operate_point_id=f"AP{station}",
                        station_name=f"ST{station}",
                        storage_location_name=f"库位{station}-{layer}",
                        scene_id=scene_id,
                        storage_area_id=area,
                        area_name=f"{area}库区",
                        is_occupied=occupied,
                        goods_content="纸箱" if occupied else "",
                        goods_stored_at=now if occupied else None,
                        last_access_at=now,
                        max_weight=5000,
                        max_volume=1000,
                        layer_height=100,
                        tags="",
                        created_at=now,
                        updated_at=now,
                    )
                )
    return locations
