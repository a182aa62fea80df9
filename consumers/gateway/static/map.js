/* The live operator map: follows the gateway's `map` channel over SSE with the support token of the URL
   fragment (`/map/#token=...`) and draws each snapshot with Leaflet. Plain ES2017, no build step. */
(function () {
  'use strict';

  const DRIVER_COLOURS = {available: '#2a9d4b', on_trip: '#1f6fd1', offline: '#8a8f98'};
  const UNKNOWN_STATE_COLOUR = '#444';
  const REQUEST_COLOUR = '#f28c28';
  const ASSIGNMENT_COLOUR = '#c2185b';
  // The gateway keeps an assignment in its snapshots for this long; the line fades over it.
  const ASSIGNMENT_WINDOW_MS = 30000;
  // An assignment is remembered longer than it is shown, so that a snapshot arriving late or twice
  // does not count it again in "assignments seen".
  const SEEN_MEMORY_MS = 4 * ASSIGNMENT_WINDOW_MS;
  // Graticule spacings in degrees, widest first: the widest giving at least MIN_GRID_LINES lines across
  // the view's narrower side is drawn.
  const GRID_STEPS = [30, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001];
  const MIN_GRID_LINES = 3;
  const STALE_AFTER_MS = 5000;
  // EventSource retries on its own after a dropped connection, but gives up on an HTTP error: then
  // this page retries, waiting longer each time up to the maximum.
  const FIRST_RETRY_MS = 1000;
  const MAX_RETRY_MS = 30000;

  const statusElement = document.getElementById('status');
  const countsElement = document.getElementById('counts');
  const lastUpdateElement = document.getElementById('last-update');
  const panelElement = document.getElementById('panel');

  const map = L.map('map', {preferCanvas: true}).setView([20, 0], 2);
  // The graticule has a pane and a canvas of its own beneath the data, so that it never catches the
  // pointer meant for a driver or a cell.
  map.createPane('graticule').style.zIndex = 250;
  const graticuleRenderer = L.canvas({pane: 'graticule'});
  const graticule = L.layerGroup().addTo(map);

  const drivers = new Map();
  const requests = new Map();
  const assignments = new Map();
  const cells = new Map();
  const seenAssignments = new Map();  // key -> time of the assignment (ms)
  let snapshots = 0;
  let assignmentsSeen = 0;
  let lastSnapshotAt = null;  // this browser's clock, for the age shown
  let lastSnapshotTs = null;  // the gateway's timestamp, as shown
  let fitted = false;

  function setStatus(text, kind) {
    statusElement.textContent = text;
    statusElement.className = 'status status-' + kind;
  }

  // -- graticule ----------------------------------------------------------------------------------------

  function gridLabel(value, step, positive, negative) {
    const digits = Math.max(0, Math.ceil(-Math.log10(step)));
    const hemisphere = value > 0 ? positive : value < 0 ? negative : '';
    return Math.abs(value).toFixed(digits) + '°' + hemisphere;
  }

  function drawGraticule() {
    graticule.clearLayers();
    const view = map.getBounds();
    const span = Math.min(view.getNorth() - view.getSouth(), view.getEast() - view.getWest());
    const step = GRID_STEPS.find((candidate) => span / candidate >= MIN_GRID_LINES) || GRID_STEPS[GRID_STEPS.length - 1];
    // Drawn beyond the view, so that panning does not show the lines' ends before the next redraw.
    const area = view.pad(0.5);
    const south = Math.max(area.getSouth(), -90);
    const north = Math.min(area.getNorth(), 90);
    const west = area.getWest();
    const east = area.getEast();
    const line = {renderer: graticuleRenderer, interactive: false, color: '#b9b2a3', weight: 1, opacity: 0.7};
    const labelAnchor = map.containerPointToLatLng([4, map.getSize().y - 4]);
    for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
      graticule.addLayer(L.polyline([[lat, west], [lat, east]], line));
      graticule.addLayer(gridMarker([lat, labelAnchor.lng], gridLabel(lat, step, 'N', 'S'), 'grid-label-lat'));
    }
    for (let lng = Math.ceil(west / step) * step; lng <= east; lng += step) {
      const wrapped = ((lng + 540) % 360) - 180;
      graticule.addLayer(L.polyline([[south, lng], [north, lng]], line));
      graticule.addLayer(gridMarker([labelAnchor.lat, lng], gridLabel(wrapped, step, 'E', 'W'), 'grid-label-lng'));
    }
  }

  function gridMarker(latlng, text, className) {
    const icon = L.divIcon({className: 'grid-label ' + className, html: text, iconSize: null});
    return L.marker(latlng, {icon: icon, pane: 'graticule', interactive: false, keyboard: false});
  }

  map.on('moveend', drawGraticule);
  drawGraticule();

  // -- layers -------------------------------------------------------------------------------------------

  /* Brings the layers of one kind in line with a snapshot's items: a layer per key, made by `create`,
     updated by `update`, removed once its key is gone. Returns how many layers it made. */
  function sync(layers, items, keyOf, create, update) {
    const present = new Set();
    let created = 0;
    for (const item of items) {
      const key = keyOf(item);
      present.add(key);
      const layer = layers.get(key);
      if (layer) {
        update(layer, item);
      } else {
        layers.set(key, create(item).addTo(map));
        created += 1;
      }
    }
    for (const [key, layer] of layers) {
      if (!present.has(key)) {
        map.removeLayer(layer);
        layers.delete(key);
      }
    }
    return created;
  }

  function driverStyle(driver) {
    const colour = DRIVER_COLOURS[driver.state] || UNKNOWN_STATE_COLOUR;
    return {radius: 4, color: '#fff', weight: 1, fillColor: colour, fillOpacity: 0.95};
  }

  function makeDriver(driver) {
    const marker = L.circleMarker([driver.lat, driver.lng], driverStyle(driver));
    marker.info = driver;
    marker.bindTooltip((layer) => escapeHtml(layer.info.id) + ' · ' + escapeHtml(layer.info.state));
    return marker;
  }

  function updateDriver(marker, driver) {
    if (marker.info.state !== driver.state) {
      marker.setStyle(driverStyle(driver));
    }
    if (marker.info.lat !== driver.lat || marker.info.lng !== driver.lng) {
      marker.setLatLng([driver.lat, driver.lng]);
    }
    marker.info = driver;
  }

  function makeRequest(request) {
    const marker = L.circleMarker([request.lat, request.lng],
      {radius: 5, color: '#8a4a0f', weight: 1, fillColor: REQUEST_COLOUR, fillOpacity: 0.9});
    marker.info = request;
    marker.bindTooltip((layer) => 'request ' + escapeHtml(layer.info.id));
    return marker;
  }

  function updateRequest(marker, request) {
    marker.info = request;
  }

  function assignmentKey(assignment) {
    // A booking given to another driver after a refusal is another assignment.
    return assignment.booking_id + '|' + assignment.driver_id;
  }

  function assignedAt(assignment, now) {
    return Date.parse(assignment.ts) || now;
  }

  /* An assignment's line, from where the driver was when assigned (or, when the gateway had not seen
     the driver then, from where it is now) to the restaurant; null when the driver's place is unknown. */
  function assignmentLine(assignment, driversById, now) {
    let from = [assignment.driver_lat, assignment.driver_lng];
    if (typeof from[0] !== 'number' || typeof from[1] !== 'number') {
      const driver = driversById.get(assignment.driver_id);
      if (!driver) {
        return null;
      }
      from = [driver.lat, driver.lng];
    }
    const age = Math.max(0, now - assignedAt(assignment, now));
    return {
      key: assignmentKey(assignment),
      latlngs: [from, [assignment.lat, assignment.lng]],
      opacity: Math.max(0.25, 1 - 0.75 * age / ASSIGNMENT_WINDOW_MS),
      info: assignment,
    };
  }

  function makeAssignment(line) {
    const polyline = L.polyline(line.latlngs, {color: ASSIGNMENT_COLOUR, weight: 2.5, opacity: line.opacity});
    polyline.info = line.info;
    polyline.bindTooltip((layer) => escapeHtml(layer.info.booking_id) + ' → ' + escapeHtml(layer.info.driver_id));
    return polyline;
  }

  function updateAssignment(polyline, line) {
    polyline.info = line.info;
    polyline.setLatLngs(line.latlngs);
    polyline.setStyle({opacity: line.opacity});
  }

  function cellStyle(cell) {
    const demand = cell.requests || 0;
    const supply = cell.available_drivers || 0;
    if (demand + supply === 0) {
      return {color: '#9a968c', weight: 0.5, fillColor: '#9a968c', fillOpacity: 0.08};
    }
    // 0: only drivers, 1: only requests; hue from teal through yellow to red.
    const pressure = demand / (demand + supply);
    const colour = 'hsl(' + Math.round(180 * (1 - pressure)) + ', 70%, 50%)';
    return {color: colour, weight: 0.8, opacity: 0.6, fillColor: colour, fillOpacity: 0.25};
  }

  function makeCell(cell) {
    const polygon = L.polygon(cell.boundary, cellStyle(cell));
    polygon.info = cell;
    polygon.bindTooltip((layer) => {
      const c = layer.info;
      return escapeHtml(c.h3) + '<br>' + c.available_drivers + ' available drivers, ' + c.requests +
        ' requests<br>' + c.assigned + ' assigned, ' + c.refused + ' refused';
    });
    return polygon.bringToBack();
  }

  function updateCell(polygon, cell) {
    polygon.info = cell;
    polygon.setStyle(cellStyle(cell));
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => '&#' + c.charCodeAt(0) + ';');
  }

  // -- snapshots ----------------------------------------------------------------------------------------

  function countNewAssignments(items, now) {
    let added = 0;
    for (const assignment of items) {
      const key = assignmentKey(assignment);
      if (!seenAssignments.has(key)) {
        seenAssignments.set(key, assignedAt(assignment, now));
        added += 1;
      }
    }
    for (const [key, at] of seenAssignments) {
      if (now - at > SEEN_MEMORY_MS) {
        seenAssignments.delete(key);
      }
    }
    return added;
  }

  function drawSnapshot(snapshot) {
    const now = Date.parse(snapshot.ts) || Date.now();
    const driverItems = snapshot.drivers || [];
    const requestItems = snapshot.requests || [];
    const assignmentItems = snapshot.assignments || [];
    const cellItems = snapshot.cells || [];

    sync(cells, cellItems, (cell) => cell.h3, makeCell, updateCell);
    const driversById = new Map(driverItems.map((driver) => [driver.id, driver]));
    const lines = assignmentItems.map((assignment) => assignmentLine(assignment, driversById, now)).filter(Boolean);
    const newDrivers = sync(drivers, driverItems, (driver) => driver.id, makeDriver, updateDriver);
    sync(assignments, lines, (line) => line.key, makeAssignment, updateAssignment);
    sync(requests, requestItems, (request) => request.id, makeRequest, updateRequest);
    if (newDrivers > 0) {
      // One canvas draws everything in the order it was added: the few lines and requests stay above
      // the many drivers, so that an assignment shows even where drivers crowd.
      for (const layer of [...assignments.values(), ...requests.values()]) {
        layer.bringToFront();
      }
    }

    assignmentsSeen += countNewAssignments(assignmentItems, now);
    snapshots += 1;
    lastSnapshotAt = Date.now();
    lastSnapshotTs = snapshot.ts;
    showCounts(driverItems, requestItems.length, assignmentItems.length, cellItems.length);
    if (!fitted && driverItems.length > 0) {
      fitToDrivers(driverItems);
      fitted = true;
    }
  }

  function fitToDrivers(items) {
    const bounds = L.latLngBounds(items.map((driver) => [driver.lat, driver.lng]));
    // The panel covers the map's top right corner: keep the drivers out from under it.
    const panelWidth = panelElement.offsetWidth + 20;
    map.fitBounds(bounds, {paddingTopLeft: [30, 30], paddingBottomRight: [panelWidth, 30], maxZoom: 15, animate: false});
  }

  function showCounts(driverItems, requestCount, recentAssignments, cellCount) {
    const byState = {available: 0, on_trip: 0, offline: 0};
    for (const driver of driverItems) {
      if (driver.state in byState) {
        byState[driver.state] += 1;
      }
    }
    const values = {
      drivers: driverItems.length,
      available: byState.available,
      onTrip: byState.on_trip,
      offline: byState.offline,
      requests: requestCount,
      recentAssignments: recentAssignments,
      assignments: assignmentsSeen,
      cells: cellCount,
      snapshots: snapshots,
    };
    for (const name of Object.keys(values)) {
      countsElement.dataset[name] = String(values[name]);
    }
    document.getElementById('count-drivers').textContent = values.drivers;
    document.getElementById('count-available').textContent = values.available;
    document.getElementById('count-on-trip').textContent = values.onTrip;
    document.getElementById('count-offline').textContent = values.offline;
    document.getElementById('count-requests').textContent = values.requests;
    document.getElementById('count-recent-assignments').textContent = values.recentAssignments;
    document.getElementById('count-assignments').textContent = values.assignments;
    showAge();
  }

  function showAge() {
    if (lastSnapshotAt === null) {
      return;
    }
    const age = Date.now() - lastSnapshotAt;
    const at = new Date(Date.parse(lastSnapshotTs) || lastSnapshotAt).toLocaleTimeString();
    lastUpdateElement.textContent = at + ' · ' + Math.round(age / 1000) + ' s ago';
    lastUpdateElement.classList.toggle('stale', age > STALE_AFTER_MS);
  }

  setInterval(showAge, 1000);

  // -- the stream ---------------------------------------------------------------------------------------

  /* EventSource gives no status when the gateway refuses it: the same request again says why. */
  async function whyRefused(url) {
    const controller = new AbortController();
    try {
      const response = await fetch(url, {signal: controller.signal, cache: 'no-store'});
      if (response.ok) {
        controller.abort();  // a stream: not to be read here
        return {status: response.status};
      }
      let body = {};
      try {
        body = await response.json();
      } catch (notJson) {
        body = {};
      }
      return {status: response.status, error: body.error, detail: body.detail};
    } catch (unreachable) {
      return {status: 0};
    }
  }

  function refusalText(refusal) {
    const reason = [refusal.error, refusal.detail].filter(Boolean).join(': ');
    const suffix = reason ? ' (' + refusal.status + ' ' + reason + ')' : ' (' + refusal.status + ')';
    if (refusal.status === 401) {
      return 'token refused' + suffix + '; open the map with a valid support token';
    }
    if (refusal.status === 403) {
      return 'not allowed' + suffix + '; the map needs a support or admin token with the "map" scope';
    }
    return 'no map channel on this server' + suffix;
  }

  function connect(url, retryMs) {
    setStatus('connecting', 'connecting');
    const source = new EventSource(url);
    source.onopen = () => setStatus('live', 'live');
    source.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === 'map_snapshot') {
        drawSnapshot(message);
        retryMs = FIRST_RETRY_MS;
        setStatus('live', 'live');
      }
    };
    source.addEventListener('expired', () => {
      source.close();
      setStatus('token expired; open the map again with a new token', 'error');
    });
    source.onerror = async () => {
      if (source.readyState === EventSource.CONNECTING) {
        setStatus('connection lost; reconnecting', 'connecting');
        return;
      }
      const refusal = await whyRefused(url);
      if ([401, 403, 404].includes(refusal.status)) {
        setStatus(refusalText(refusal), 'error');
        return;
      }
      const cause = refusal.status ? 'HTTP ' + refusal.status : 'gateway unreachable';
      setStatus(cause + '; reconnecting in ' + Math.round(retryMs / 1000) + ' s', 'connecting');
      setTimeout(() => connect(url, Math.min(retryMs * 2, MAX_RETRY_MS)), retryMs);
    };
  }

  const token = new URLSearchParams(window.location.hash.slice(1)).get('token');
  if (!token) {
    setStatus('no token: open this page as /map/#token=<a support token>', 'error');
  } else {
    // Relative, so that a gateway behind a path prefix serves both the page and the stream.
    connect(new URL('../realtime/map?token=' + encodeURIComponent(token), window.location.href).href, FIRST_RETRY_MS);
  }
}());
