// Shoal's dashboard: reads the cluster through the node's own API (the Docker Engine API's
// swarm subset) and redraws when it changes. Read-only: it sends GET requests only.
"use strict";

const REFRESH_MS = 1500;   // tasks give no events (as in Docker): poll them
const MAX_EVENTS = 100;
const LIVE_STATES = new Set(["new", "pending", "assigned", "accepted", "preparing", "ready",
  "starting", "running"]);

let refreshing = false;
let again = false;
let streaming = false;
let actions = false;   // the proxy was started with --allow-actions
let lastSeen = "";

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function get(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error((body && body.message) || `${resp.status} ${resp.statusText}`);
  return body;
}

function shortId(id) { return (id || "").slice(0, 12); }
function nodeName(node) { return node.Spec.Name || node.Description.Hostname; }
function serviceColor(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h}, 60%, 45%)`;
}
function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}
function cpus(nano) { return (nano / 1e9).toFixed(2).replace(/\.?0+$/, "") || "0"; }

// A task is shown while its desired state is a live one: what the cluster means to run.
function isLive(task) { return LIVE_STATES.has(task.DesiredState); }

function serviceNames(services) {
  const names = {};
  for (const s of services) names[s.ID] = s.Spec.Name;
  return names;
}

function taskLabel(task, names) {
  const svc = names[task.ServiceID] || shortId(task.ServiceID);
  return task.Slot ? `${svc}.${task.Slot}` : `${svc}.${shortId(task.NodeID)}`;
}

function taskCard(task, names) {
  const svc = names[task.ServiceID] || shortId(task.ServiceID);
  const state = task.Status.State;
  const card = el("div", { class: "task", "data-service": svc, "data-state": state,
                           "data-task": task.ID, title: task.Status.Message || "" },
    el("span", { class: "state" }, state), taskLabel(task, names));
  card.style.setProperty("--svc", serviceColor(svc));
  if (task.Status.Err) card.append(el("div", { class: "reason" }, task.Status.Err));
  return card;
}

function renderGrid(nodes, tasks, names) {
  const byNode = {};
  const unassigned = [];
  for (const t of tasks.filter(isLive)) {
    if (t.NodeID) (byNode[t.NodeID] = byNode[t.NodeID] || []).push(t);
    else unassigned.push(t);
  }
  const sortTasks = (list) => list.sort((a, b) => taskLabel(a, names).localeCompare(
    taskLabel(b, names), undefined, { numeric: true }));
  const cols = nodes.map((n) => {
    const col = el("div", { class: "node-col", "data-node": nodeName(n), "data-node-id": n.ID,
                            "data-role": n.Spec.Role, "data-availability": n.Spec.Availability,
                            "data-state": n.Status.State },
      el("div", { class: "head" }, el("div", { class: "name" }, nodeName(n)),
        el("div", { class: "muted" },
          `${n.Spec.Role}${n.ManagerStatus && n.ManagerStatus.Leader ? " (leader)" : ""} · ` +
          `${n.Spec.Availability} · ${n.Status.State}`)),
      el("div", { class: "tasks" }, ...sortTasks(byNode[n.ID] || []).map((t) => taskCard(t, names))));
    return col;
  });
  if (unassigned.length) {
    cols.push(el("div", { class: "node-col", "data-node": "", "data-role": "unassigned" },
      el("div", { class: "head" }, el("div", { class: "name" }, "not assigned"),
        el("div", { class: "muted" }, "waiting for a node")),
      el("div", { class: "tasks" }, ...sortTasks(unassigned).map((t) => taskCard(t, names)))));
  }
  $("grid").replaceChildren(...cols);
}

function rows(tbodyParent, list, empty, columns) {
  const tbody = $(tbodyParent).querySelector("tbody");
  if (!list.length) {
    const span = $(tbodyParent).querySelectorAll("th").length;
    tbody.replaceChildren(el("tr", {}, el("td", { class: "empty", colSpan: span }, empty)));
    return;
  }
  tbody.replaceChildren(...list.map(columns));
}

function renderNodes(nodes, tasks) {
  const used = {};
  for (const t of tasks) {
    if (!t.NodeID || t.DesiredState !== "running") continue;
    const r = (t.Spec.Resources && t.Spec.Resources.Reservations) || {};
    const u = (used[t.NodeID] = used[t.NodeID] || { cpu: 0, mem: 0, n: 0 });
    u.cpu += r.NanoCPUs || 0; u.mem += r.MemoryBytes || 0; u.n += 1;
  }
  rows("nodes", nodes, "no nodes", (n) => {
    const res = n.Description.Resources || {};
    const u = used[n.ID] || { cpu: 0, mem: 0, n: 0 };
    const ms = n.ManagerStatus;
    const manager = ms ? (ms.Leader ? "Leader" : ms.Reachability) : "";
    return el("tr", { "data-node": nodeName(n) },
      el("td", {}, nodeName(n)), el("td", { class: "mono" }, shortId(n.ID)),
      el("td", { "data-field": "role" }, n.Spec.Role),
      el("td", { "data-field": "availability" }, n.Spec.Availability),
      el("td", { "data-field": "state" }, n.Status.State),
      el("td", { "data-field": "manager" }, manager),
      el("td", {}, `${cpus(u.cpu)} / ${cpus(res.NanoCPUs || 0)}`),
      el("td", {}, `${bytes(u.mem)} / ${bytes(res.MemoryBytes || 0)}`),
      el("td", { "data-field": "tasks" }, u.n),
      el("td", {}, (n.Description.Engine && n.Description.Engine.EngineVersion) || ""),
      el("td", { class: "actions" }, n.Spec.Availability === "active"
        ? button("drain", "drain", () => setAvailability(n, "drain"))
        : button("activate", "activate", () => setAvailability(n, "active"))));
  });
}

function button(action, text, onclick) {
  return el("button", { type: "button", "data-action": action, onclick }, text);
}

// An action (only offered when the proxy allows them): read the object, change its spec,
// write it back at the version read, as `docker service scale` / `docker node update` do.
async function act(kind, id, what, change) {
  try {
    const obj = await get(`/${kind}/${id}`);
    change(obj.Spec);
    const resp = await fetch(`/${kind}/${id}/update?version=${obj.Version.Index}`, {
      method: "POST", body: JSON.stringify(obj.Spec),
      headers: { "Content-Type": "application/json", "X-Shoal-Dashboard": "1" } });
    if (!resp.ok) {
      const body = await resp.json().catch(() => null);
      throw new Error((body && body.message) || `${resp.status} ${resp.statusText}`);
    }
    notice(`${what}: done`);
  } catch (err) {
    notice(`${what}: ${err.message}`, true);
  }
  refresh();
}

function scale(service, by) {
  const name = service.Spec.Name;
  act("services", service.ID, `scale ${name}`, (spec) => {
    spec.Mode.Replicated.Replicas = Math.max(0, (spec.Mode.Replicated.Replicas || 0) + by);
  });
}

function setAvailability(node, availability) {
  act("nodes", node.ID, `${availability} ${nodeName(node)}`, (spec) => {
    spec.Availability = availability;
  });
}

function notice(text, error) {
  const n = $("notice");
  n.textContent = text;
  n.dataset.error = error ? "true" : "false";
}

function mode(s) {
  const m = s.Spec.Mode || {};
  if (m.Replicated) return "replicated";
  if (m.Global) return "global";
  if (m.ReplicatedJob) return "replicated job";
  if (m.GlobalJob) return "global job";
  return "";
}

function renderServices(services) {
  rows("services", services, "no services", (s) => {
    const st = s.ServiceStatus || {};
    const ports = ((s.Endpoint && s.Endpoint.Ports) || []).map(
      (p) => `${p.PublishedPort}->${p.TargetPort}/${p.Protocol}`).join(", ");
    const update = s.UpdateStatus ? s.UpdateStatus.State + (s.UpdateStatus.Message ?
      `: ${s.UpdateStatus.Message}` : "") : "";
    const image = s.Spec.TaskTemplate.ContainerSpec.Image.split("@")[0];
    return el("tr", { "data-service": s.Spec.Name },
      el("td", {}, s.Spec.Name), el("td", {}, mode(s)),
      el("td", { "data-field": "replicas" }, `${st.RunningTasks || 0}/${st.DesiredTasks || 0}`),
      el("td", {}, image), el("td", { "data-field": "update" }, update), el("td", {}, ports),
      el("td", { class: "actions" }, ...(s.Spec.Mode.Replicated ? [
        button("scale-down", "−", () => scale(s, -1)),
        button("scale-up", "+", () => scale(s, +1))] : [])));
  });
}

function renderUnplaced(tasks, names) {
  const list = tasks.filter((t) => isLive(t) && !t.NodeID && t.Status.Err);
  const items = list.map((t) => el("li", { "data-service": names[t.ServiceID] || "" },
    el("b", {}, taskLabel(t, names)), ": ", t.Status.Err));
  $("unplaced").replaceChildren(...(items.length ? items :
    [el("li", { class: "empty" }, "every task has a node")]));
}

function renderNetworks(networks) {
  const swarm = networks.filter((n) => n.Scope === "swarm");
  rows("networks", swarm, "no swarm networks", (n) => {
    const subnets = ((n.IPAM && n.IPAM.Config) || []).map((c) => c.Subnet).join(", ");
    const opts = Object.entries(n.Options || {}).map(([k, v]) => (v ? `${k}=${v}` : k));
    if (n.Attachable) opts.push("attachable");
    if (n.Ingress) opts.push("ingress");
    return el("tr", { "data-network": n.Name },
      el("td", {}, n.Name), el("td", { class: "mono" }, shortId(n.Id || n.ID)),
      el("td", {}, n.Driver), el("td", {}, n.Scope), el("td", {}, subnets),
      el("td", {}, opts.join(", ")));
  });
}

function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const [nodes, services, tasks, networks] = await Promise.all([
      get("/nodes"), get("/services?status=true"), get("/tasks"), get("/networks")]);
    nodes.sort((a, b) => nodeName(a).localeCompare(nodeName(b)));
    services.sort((a, b) => a.Spec.Name.localeCompare(b.Spec.Name));
    const seen = JSON.stringify([nodes, services, tasks, networks, actions]);
    if (seen !== lastSeen) {   // redraw only on a change: a button stays under the pointer
      lastSeen = seen;
      render(nodes, services, tasks, networks);
    }
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    setStatus(streaming ? "live" : "connecting", streaming ? "live" : "polling");
  } catch (err) {
    setStatus("error", err.message);
  } finally {
    refreshing = false;
    if (again) { again = false; refresh(); }
  }
}

function render(nodes, services, tasks, networks) {
  const names = serviceNames(services);
  renderGrid(nodes, tasks, names);
  renderNodes(nodes, tasks);
  renderServices(services);
  renderUnplaced(tasks, names);
  renderNetworks(networks);
}

function describeEvent(ev) {
  const attrs = ev.Actor.Attributes || {};
  const changes = Object.entries(attrs).filter(([k]) => k.endsWith(".new")).map(
    ([k, v]) => `${k.slice(0, -4)}: ${attrs[k.slice(0, -4) + ".old"] || "-"} → ${v}`);
  const when = new Date(ev.timeNano / 1e6).toLocaleTimeString();
  return `${when} ${ev.Type} ${ev.Action} ${attrs.name || shortId(ev.Actor.ID)}` +
    (changes.length ? ` (${changes.join(", ")})` : "");
}

function addEvent(ev) {
  const list = $("events");
  list.prepend(el("li", { "data-type": ev.Type, "data-action": ev.Action,
                          "data-name": (ev.Actor.Attributes || {}).name || "" },
    describeEvent(ev)));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// The API's event stream: one JSON object per line, for as long as the connection lasts.
async function followEvents() {
  let wait = 1000;
  for (;;) {
    try {
      const since = Math.floor(Date.now() / 1000) - 300;
      const resp = await fetch(`/events?since=${since}`);
      if (!resp.ok) throw new Error(`events: ${resp.status}`);
      streaming = true;
      setStatus("live", "live");
      wait = 1000;
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      $("events").replaceChildren();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        const lines = buffered.split("\n");
        buffered = lines.pop();
        for (const line of lines.filter((l) => l.trim())) addEvent(JSON.parse(line));
        refresh();
      }
    } catch (err) {
      setStatus("error", `event stream: ${err.message}`);
    }
    streaming = false;
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 15000);
  }
}

async function start() {
  try {
    actions = (await get("/dashboard/proxy.json")).actions === true;
  } catch (err) {
    actions = false;   // served by the node itself, or an older proxy: read-only
  }
  document.body.classList.toggle("with-actions", actions);
  refresh();
  setInterval(refresh, REFRESH_MS);
  followEvents();
}

start();
