-- hints.lua: applies changes to one shard cell's hints, the available drivers that searches read.
-- KEYS[1] the shard's GEO set of available drivers, KEYS[2] its hash of their fixes ("<ts> <cell> <lat>
-- <lng>": the GEO set keeps a position to within a metre or so, the searches answer with the exact one).
-- ARGV[1] one JSON array of changes: [id, lng, lat, ts, cell] for a driver available at that fix,
-- [id] for one that is not (or no longer in this shard). Returns how many changes were applied.
--
-- Hints are only where to look: the driver's own hash (in its partition's slot) says whether it is
-- available, and a reservation checks it there (reserve.lua). A hint may lag its driver by one write
-- (two writers' hints crossing: a reservation and a ping); the driver's next ping mends it.
local changes = cjson.decode(ARGV[1])
for _, change in ipairs(changes) do
  apply_hint(KEYS[1], KEYS[2], change)
end
return #changes
