"""The supply/demand feed's timers: each writes its kind's changed shares (streams.supply_demand)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.app import DispatchApp


async def write_supply(app: DispatchApp) -> None:
    if app.runtime.supply_demand is not None:
        await app.runtime.supply_demand.emit_supply()


async def write_demand(app: DispatchApp) -> None:
    if app.runtime.supply_demand is not None:
        await app.runtime.supply_demand.emit_demand()
