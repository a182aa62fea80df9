"""City presets for the simulator: a centre, how far the city reaches, and its region key."""

from __future__ import annotations

from dataclasses import dataclass

from infra.topics import region_key


@dataclass(frozen=True)
class City:
    slug: str
    name: str
    lat: float
    lng: float
    # Drivers and restaurants stay within this distance of the centre.
    radius_km: float
    # Typical urban driving speeds in m/s (traffic, lights): 15 to 40 km/h.
    min_speed_mps: float = 4.0
    max_speed_mps: float = 11.0

    @property
    def region(self) -> str:
        return region_key(self.lat, self.lng)


CITIES: dict[str, City] = {
    city.slug: city
    for city in (
        # Seed 003's example coordinates: region 4_-7.
        City("new-york", "New York", 40.7128, -74.0060, radius_km=6.0),
        # Region 0_0, as in the seeds; slower traffic.
        City("lagos", "Lagos", 6.5244, 3.3792, radius_km=7.0, min_speed_mps=3.0, max_speed_mps=9.0),
        City("london", "London", 51.5074, -0.1278, radius_km=6.0),
    )
}
