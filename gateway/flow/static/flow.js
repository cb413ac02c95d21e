// The live flow page: draws each record of /flow/events (gateway/flow/) as an arrow between lanes.
// Plain JavaScript, no build step. Every text from the stream goes through textContent or a data
// attribute, never through HTML, so a path or an event field can never become markup.
"use strict";

(() => {
  const LANES = ["client", "gateway", "users_service", "orders_service", "broker"];
  const MAX_ROWS = 1500; // older rows go, so that a page left open for a day stays fast
  const MAX_BACKLOG = 5000; // records held while paused
  const KIND_NAMES = {
    "http.request": "HTTP request",
    "http.response": "HTTP response",
    "event.published": "event published",
    "event.delivered": "event delivered",
  };
  const STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
    401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    422: "Unprocessable Content", 429: "Too Many Requests", 431: "Headers Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
  };

  const $ = (id) => document.getElementById(id);
  const rows = $("rows");
  const scroller = $("scroller");
  const filterInput = $("filter");
  const pauseButton = $("pause");
  const jumpButton = $("jump");
  const panel = $("panel");

  const records = new Map(); // record id -> record, for the panel (as many as there are rows)
  const orderOfStory = new Map(); // correlation id -> the order its story is about
  const counts = { http: 0, events: 0 };
  let filter = "";
  let paused = false;
  let backlog = [];
  let pending = [];
  let unseenBelow = 0;
  let selected = null;
  let frameRequested = false;
  let lastStory = null; // the correlation id of the newest row

  // --- records to rows ------------------------------------------------------------------------

  function laneCenter(lane) {
    const index = LANES.indexOf(lane);
    return index < 0 ? null : ((index + 0.5) * 100) / LANES.length;
  }

  function hue(text) {
    let hash = 0;
    for (let i = 0; i < text.length; i += 1) hash = (hash * 31 + text.charCodeAt(i)) | 0;
    return Math.abs(hash) % 360;
  }

  function clock(iso) {
    const time = new Date(iso);
    if (Number.isNaN(time.getTime())) return "";
    const pad = (n, width = 2) => String(n).padStart(width, "0");
    return `${pad(time.getHours())}:${pad(time.getMinutes())}:${pad(time.getSeconds())}.${pad(time.getMilliseconds(), 3)}`;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // An order's id is known to some records only (an event's data, a path, a Location header); the
  // others of its story (the POST that created it) learn it through their shared correlation id.
  function learnStory(record) {
    const story = record.correlation_id;
    if (!story || !record.order_id || orderOfStory.has(story)) return;
    orderOfStory.set(story, record.order_id);
    for (const row of rows.querySelectorAll(`.row[data-correlation-id="${CSS.escape(story)}"]`)) {
      if (!row.dataset.orderId) {
        row.dataset.orderId = record.order_id;
        row.querySelector(".arrow").dataset.orderId = record.order_id;
        applyFilter(row);
      }
    }
  }

  // Ids in paths are shown by their first 8 characters, as logs show them; the panel has them whole.
  function shortIds(path) {
    return path.replace(/([0-9a-fA-F]{8})-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/g, "$1…");
  }

  function labelOf(record, arrow) {
    const label = element("span", "label");
    if (record.kind === "http.response") {
      const status = record.status;
      if (status === null) {
        arrow.classList.add("error");
      } else if (status >= 500) {
        arrow.classList.add("error");
      } else if (status >= 400) {
        arrow.classList.add("client-error");
      }
      const strong = element("b", "", status === null ? "no answer" : `${status} ${STATUS_TEXT[status] || ""}`.trim());
      label.append(strong, ` · ${record.ms} ms`);
      if (status === null) label.title = record.label;
    } else if (record.kind === "http.request") {
      const [method, ...path] = record.label.split(" ");
      label.append(element("b", "", method), ` ${shortIds(path.join(" "))}`);
      label.title = record.label;
    } else {
      label.textContent = record.label;
      if (record.problem) {
        arrow.classList.add("error");
        label.append(" ⚠");
      }
    }
    return label;
  }

  function rowOf(record) {
    const story = record.correlation_id || "";
    const orderId = record.order_id || orderOfStory.get(story) || "";
    const row = element("li", "row");
    row.dataset.correlationId = story;
    row.dataset.orderId = orderId;
    if (story) row.style.setProperty("--story-hue", String(hue(story)));

    const stamp = element("div", "stamp");
    const bar = element("span", "story");
    bar.title = story ? `correlation id ${story}` : "";
    stamp.append(bar, element("time", "", clock(record.time)));
    if (story) stamp.append(element("span", "cid", story.slice(0, 8)));
    stamp.querySelector("time").dateTime = record.time;

    const track = element("div", "track");
    const arrow = element("div", "arrow");
    arrow.tabIndex = 0;
    arrow.setAttribute("role", "button");
    arrow.dataset.id = record.id;
    arrow.dataset.kind = record.kind;
    arrow.dataset.from = record.from;
    arrow.dataset.to = record.to;
    arrow.dataset.correlationId = story;
    arrow.dataset.orderId = orderId;
    arrow.dataset.type = record.type || "";
    if (record.status !== null && record.status !== undefined) arrow.dataset.status = String(record.status);

    let from = laneCenter(record.from);
    let to = laneCenter(record.to);
    if (from === null || to === null || from === to) {
      // Unknown or identical lanes (a message from a producer the page does not know): a loop.
      const at = to ?? from ?? laneCenter("broker");
      arrow.classList.add("self");
      from = at;
      to = at + 4;
    }
    if (to < from) arrow.classList.add("rtl");
    arrow.style.left = `${Math.min(from, to)}%`;
    arrow.style.width = `${Math.abs(to - from)}%`;
    arrow.append(labelOf(record, arrow), element("span", "line"));
    arrow.setAttribute(
      "aria-label",
      `${KIND_NAMES[record.kind] || record.kind} from ${record.from} to ${record.to}: ${record.label}`,
    );
    track.append(arrow);
    row.append(stamp, track);
    return row;
  }

  function gapRow(lost) {
    const row = element("li", "row gap");
    row.dataset.correlationId = "";
    row.dataset.orderId = "";
    row.append(element("div", "stamp"), element("div", "track", `${lost} records skipped: this page fell behind`));
    return row;
  }

  // --- filtering --------------------------------------------------------------------------------

  function matches(row) {
    if (!filter) return true;
    if (row.classList.contains("gap")) return false;
    const story = row.dataset.correlationId.toLowerCase();
    const order = row.dataset.orderId.toLowerCase();
    return (story && story.includes(filter)) || (order && order.includes(filter));
  }

  function applyFilter(row) {
    row.hidden = !matches(row);
  }

  function setFilter(value, { updateInput = false } = {}) {
    filter = value.trim().toLowerCase();
    if (updateInput) filterInput.value = value;
    filterInput.parentElement.classList.toggle("active", Boolean(filter));
    for (const row of rows.children) applyFilter(row);
    const url = new URL(window.location.href);
    if (filter) url.searchParams.set("filter", value.trim());
    else url.searchParams.delete("filter");
    window.history.replaceState(null, "", url);
    updateEmpty();
  }

  // --- rendering, batched per frame ---------------------------------------------------------------

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
  }

  function enqueue(item) {
    if (paused) {
      backlog.push(item);
      if (backlog.length > MAX_BACKLOG) backlog = backlog.slice(-MAX_BACKLOG);
      pauseButton.textContent = `Resume · ${backlog.length}`;
      return;
    }
    pending.push(item);
    if (!frameRequested) {
      frameRequested = true;
      window.requestAnimationFrame(flush);
    }
  }

  function flush() {
    frameRequested = false;
    if (!pending.length) return;
    const stick = nearBottom();
    let added = 0;
    for (const item of pending) {
      let row;
      if (item.lost) {
        row = gapRow(item.lost);
      } else {
        if (records.has(item.id)) continue; // sent again after a reconnect
        records.set(item.id, item);
        learnStory(item);
        row = rowOf(item);
        if (item.kind.startsWith("http.")) counts.http += 1;
        else if (item.kind === "event.published") counts.events += 1;
      }
      if (row.dataset.correlationId !== lastStory) row.classList.add("story-start");
      lastStory = row.dataset.correlationId;
      applyFilter(row);
      // Into the page at once (not a fragment): a later record of this batch may complete the
      // story of this row (learnStory), and only rows in the page are found.
      rows.append(row);
      added += row.hidden ? 0 : 1;
    }
    pending = [];
    while (rows.children.length > MAX_ROWS) {
      const arrow = rows.firstElementChild.querySelector(".arrow");
      if (arrow) records.delete(arrow.dataset.id);
      rows.firstElementChild.remove();
    }
    if (stick) {
      scroller.scrollTop = scroller.scrollHeight;
    } else if (added) {
      unseenBelow += added;
      jumpButton.textContent = `${unseenBelow} new below ↓`;
      jumpButton.hidden = false;
    }
    updateCounts();
    updateEmpty();
  }

  function updateCounts() {
    $("counts").textContent = `${counts.http} HTTP messages · ${counts.events} events`;
  }

  function updateEmpty() {
    const visible = Array.prototype.some.call(rows.children, (row) => !row.hidden);
    $("empty").hidden = visible;
    if (!visible && filter && rows.children.length) {
      $("empty").querySelector(".empty-title").textContent = `Nothing matches “${filter}” yet`;
    } else {
      $("empty").querySelector(".empty-title").textContent = "Waiting for traffic";
    }
  }

  // --- the side panel ---------------------------------------------------------------------------

  function highlightJson(pre, value) {
    const text = JSON.stringify(value, null, 2);
    const token = /("(?:\\u[0-9a-fA-F]{4}|\\[^u]|[^\\"])*")(\s*:)?|\b(true|false|null)\b|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;
    pre.textContent = "";
    let last = 0;
    for (const match of text.matchAll(token)) {
      pre.append(text.slice(last, match.index));
      if (match[1]) {
        pre.append(element("span", match[2] ? "k" : "s", match[1]));
        if (match[2]) pre.append(match[2]);
      } else {
        pre.append(element("span", match[3] ? "b" : "n", match[0]));
      }
      last = match.index + match[0].length;
    }
    pre.append(text.slice(last));
  }

  function field(list, name, value, { filterable = false, className = "" } = {}) {
    if (value === null || value === undefined || value === "") return;
    const dd = element("dd", className);
    if (filterable) {
      const link = element("button", "link", value);
      link.type = "button";
      link.title = "Show only this story";
      link.addEventListener("click", () => setFilter(value, { updateInput: true }));
      dd.append(link);
    } else {
      dd.textContent = value;
    }
    list.append(element("dt", "", name), dd);
  }

  function openPanel(arrow) {
    const record = records.get(arrow.dataset.id);
    if (!record) return;
    if (selected) selected.classList.remove("selected");
    selected = arrow;
    arrow.classList.add("selected");

    const kind = $("panel-kind");
    kind.dataset.kind = record.kind;
    kind.textContent = KIND_NAMES[record.kind] || record.kind;
    $("panel-title").textContent = record.label;

    const list = $("panel-fields");
    list.textContent = "";
    field(list, "from → to", `${record.from} → ${record.to}`);
    field(list, "time", `${clock(record.time)}  (${record.time})`);
    field(list, "correlation id", record.correlation_id, { filterable: true });
    field(list, "order id", record.order_id || arrow.dataset.orderId, { filterable: true });
    if (record.kind.startsWith("http.")) {
      field(list, "request", `${record.method} ${record.path}`);
      if (record.kind === "http.response") {
        field(list, "status", record.status === null ? "no answer" : `${record.status} ${STATUS_TEXT[record.status] || ""}`);
        field(list, "duration", `${record.ms} ms`);
        if (record.status === null) field(list, "why", record.label, { className: "problem" });
      }
    } else {
      field(list, "event type", record.type);
      if (record.envelope && typeof record.envelope === "object") {
        field(list, "event id", record.envelope.id);
        field(list, "caused by", record.envelope.causationid);
      }
      field(list, "refused because", record.problem, { className: "problem" });
    }

    const section = $("panel-envelope-section");
    if (record.envelope !== null && record.envelope !== undefined) {
      highlightJson($("panel-envelope"), record.envelope);
      section.hidden = false;
    } else {
      section.hidden = true;
    }
    panel.hidden = false;
    document.body.classList.add("with-panel");
    arrow.scrollIntoView({ block: "nearest" });
  }

  function closePanel() {
    panel.hidden = true;
    document.body.classList.remove("with-panel");
    if (selected) selected.classList.remove("selected");
    selected = null;
  }

  // --- the stream -------------------------------------------------------------------------------

  function setState(id, state, text) {
    const pill = $(id);
    pill.dataset.state = state;
    $(`${id}-text`).textContent = text;
  }

  const TAP_TEXT = {
    connecting: "broker tap: connecting",
    connected: "broker tap: connected",
    reconnecting: "broker tap: reconnecting",
    failed: "broker tap: failed (see gateway log)",
    closed: "broker tap: closed",
  };

  function connect() {
    // EventSource reconnects by itself (after the `retry` the gateway sends) and then sends
    // Last-Event-ID, so the gateway resumes where the page left off.
    const source = new EventSource("/flow/events");
    source.addEventListener("open", () => setState("status", paused ? "paused" : "live", paused ? "paused" : "live"));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setState("status", "closed", "disconnected, retrying");
        window.setTimeout(connect, 5000); // the browser gave up (an error answer): try again anyway
      } else {
        setState("status", "reconnecting", "reconnecting");
      }
    });
    source.addEventListener("record", (message) => enqueue(JSON.parse(message.data)));
    source.addEventListener("lost", (message) => enqueue({ lost: JSON.parse(message.data).records }));
    source.addEventListener("status", (message) => {
      const tap = JSON.parse(message.data).tap;
      setState("tap", tap, TAP_TEXT[tap] || `broker tap: ${tap}`);
    });
  }

  // --- controls ---------------------------------------------------------------------------------

  pauseButton.addEventListener("click", () => {
    paused = !paused;
    pauseButton.setAttribute("aria-pressed", String(paused));
    if (paused) {
      pauseButton.textContent = "Resume";
      setState("status", "paused", "paused");
    } else {
      pauseButton.textContent = "Pause";
      setState("status", "live", "live");
      const held = backlog;
      backlog = [];
      held.forEach(enqueue);
    }
  });

  $("clear").addEventListener("click", () => {
    rows.textContent = "";
    records.clear();
    lastStory = null;
    counts.http = 0;
    counts.events = 0;
    unseenBelow = 0;
    jumpButton.hidden = true;
    backlog = [];
    if (paused) pauseButton.textContent = "Resume";
    closePanel();
    updateCounts();
    updateEmpty();
  });

  filterInput.addEventListener("input", () => setFilter(filterInput.value));

  rows.addEventListener("click", (event) => {
    const arrow = event.target.closest(".arrow");
    if (arrow) openPanel(arrow);
  });
  rows.addEventListener("keydown", (event) => {
    const arrow = event.target.closest(".arrow");
    if (arrow && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      openPanel(arrow);
    }
  });
  // Hovering an arrow lights up the rest of its story.
  rows.addEventListener("mouseover", (event) => {
    const row = event.target.closest(".row");
    const story = row && row.dataset.correlationId;
    for (const lit of rows.querySelectorAll(".row.related")) lit.classList.remove("related");
    if (story) {
      for (const related of rows.querySelectorAll(`.row[data-correlation-id="${CSS.escape(story)}"]`)) {
        related.classList.add("related");
      }
    }
  });
  rows.addEventListener("mouseleave", () => {
    for (const lit of rows.querySelectorAll(".row.related")) lit.classList.remove("related");
  });

  $("panel-close").addEventListener("click", closePanel);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closePanel();
    if (event.key === "/" && document.activeElement !== filterInput) {
      event.preventDefault();
      filterInput.focus();
    }
  });

  scroller.addEventListener("scroll", () => {
    if (nearBottom()) {
      unseenBelow = 0;
      jumpButton.hidden = true;
    }
  });
  jumpButton.addEventListener("click", () => {
    scroller.scrollTop = scroller.scrollHeight;
  });

  const initial = new URLSearchParams(window.location.search).get("filter");
  if (initial) setFilter(initial, { updateInput: true });
  updateCounts();
  updateEmpty();
  connect();
})();
