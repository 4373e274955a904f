// The page: asks /api/recommend for one user or history and shows the user's recent
// clusters, the planned novel clusters with their items, and the slate beside the regular top-k.
"use strict";

const $ = (id) => document.getElementById(id);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function itemLine(item) {
  const score = item.score === null ? "" : ` (${item.score.toFixed(3)})`;
  return `${item.title} [${item.item}]${score}`;
}

function clusterBox(cluster, className, withItems) {
  const box = element("div", undefined, `cluster ${className}`);
  box.appendChild(element("span", `#${cluster.cluster} ${cluster.description}`, "name"));
  if (cluster.source) box.appendChild(element("span", cluster.source, "tag"));
  if (withItems) {
    const list = element("ol");
    for (const item of cluster.items) list.appendChild(element("li", itemLine(item)));
    box.appendChild(list);
  }
  return box;
}

function show(result) {
  const recent = $("recent"), novel = $("novel"), slate = $("slate"), regular = $("regular");
  for (const node of [recent, novel, slate, regular]) node.replaceChildren();
  for (const cluster of result.history.recent_clusters) recent.appendChild(clusterBox(cluster, "recent", false));
  for (const cluster of result.clusters) novel.appendChild(clusterBox(cluster, "novel", true));
  for (const item of result.slate) {
    const line = element("li", itemLine(item), item.kind);
    line.appendChild(element("span", item.kind === "explore" ? `explore: ${item.description}` : "regular", "tag"));
    slate.appendChild(line);
  }
  for (const item of result.regular) regular.appendChild(element("li", itemLine(item)));
  $("source").textContent = result.plan_source;
  const who = result.user === null ? "an explicit history" : `user ${result.user}`;
  $("status").textContent = `${who}: ${result.history.items} items in the history`;
  $("status").className = "";
}

async function recommend(query) {
  $("status").textContent = "asking…";
  const response = await fetch(`/api/recommend?${new URLSearchParams(query)}`);
  const data = await response.json();
  if (!response.ok) {
    console.error(`explore: HTTP ${response.status}: ${data.error}`);
    $("status").textContent = `error: ${data.error}`;
    $("status").className = "error";
    return;
  }
  show(data);
}

async function start() {
  const params = new URLSearchParams(window.location.search);
  const users = (await (await fetch("/api/users?limit=8")).json()).users;
  $("examples").textContent = users.join(", ");
  const items = params.get("items");
  const user = params.get("user") || (items ? null : String(users[0]));
  $("user").value = user || "";
  $("items").value = items || "";
  await recommend(items ? { items } : { user });
}

$("query").addEventListener("submit", (event) => {
  event.preventDefault();
  const items = $("items").value.trim();
  recommend(items ? { items } : { user: $("user").value.trim() });
});

start();
