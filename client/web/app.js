// Warbler web chat. Speaks the public protocol (REST /v1 + WebSocket /v1/ws, docs/protocol.md)
// like the Python SDK: refreshes tokens, reconnects with backoff and jitter, resumes from
// per-conversation cursors, drops duplicates by seq and fills gaps from history.
// All user content goes through textContent: never innerHTML.
"use strict";

(() => {
  // Relative to the page, so the app also works mounted under a route prefix (/<prefix>/).
  const BASE = location.pathname.replace(/[^/]*$/, "");
  const API = BASE + "v1";
  const WS_PATH = BASE + "v1/ws";
  const PAGE = 50;
  const SEARCH_PAGE = 20;
  const HISTORY_MAX = 1000; // the largest history page GET .../messages serves
  // Opening a search hit loads older history until the hit is on screen, at most this many
  // pages (HISTORY_MAX each): a hit further back opens the conversation at its newest.
  const REVEAL_MAX_LOADS = 5;
  const TYPING_TTL_MS = 10000;
  const TYPING_SEND_EVERY_MS = 3000;
  const PING_EVERY_MS = 25000;
  const REFRESH_MARGIN_MS = 30000;
  const SESSION_KEY = "warbler.session";
  const DEVICE_KEY = "warbler.device";

  // ---------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------

  const state = {
    session: null, // {access, refresh, expiresAt, user}
    ws: null,
    wsOpen: false,
    attempts: 0,
    reconnectTimer: null,
    pingTimer: null,
    stopped: true,
    cursors: new Map(), // conversation id -> last seq this page has applied
    convs: new Map(), // conversation id -> summary (+ members when known)
    messages: new Map(), // conversation id -> {list: [message], loaded: bool, hasMore: bool}
    users: new Map(), // user id -> UserPublic
    online: new Set(),
    receipts: new Map(), // conversation id -> Map(user id -> read_seq)
    typing: new Map(), // conversation id -> Map(user id -> expiry ms)
    pending: new Map(), // client_msg_id -> {frame, conversationId}
    failed: [], // sends the server refused, shown with the reason
    everOpen: false, // a socket was open before: the next one is a resume
    current: null,
    lastTypingSent: 0,
    frames: Promise.resolve(), // frames are handled one at a time, in arrival order
    search: { query: "", hits: [], next: null, token: 0 }, // the search shown in the sidebar
    found: null, // {conv, seq}: the message a search hit opened, marked in the thread
  };

  const $ = (id) => document.getElementById(id);

  // Build an element; strings become text nodes, so user content is never parsed as HTML.
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function randomId() {
    // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function deviceId() {
    let id = localStorage.getItem(DEVICE_KEY);
    if (!id) {
      id = "web-" + randomId().slice(0, 12);
      localStorage.setItem(DEVICE_KEY, id);
    }
    return id;
  }

  // ---------------------------------------------------------------------------------------
  // REST
  // ---------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function saveSession() {
    if (state.session) localStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    else localStorage.removeItem(SESSION_KEY);
  }

  function takeTokens(token) {
    state.session = {
      access: token.access_token,
      refresh: token.refresh_token,
      expiresAt: Date.now() + token.expires_in * 1000,
      user: token.user,
    };
    state.users.set(token.user.id, token.user);
    saveSession();
  }

  let refreshing = null;
  function refreshTokens() {
    // Another tab of this browser may have refreshed already (refresh tokens rotate, so ours
    // would now be refused): adopt its newer tokens instead.
    const stored = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    if (stored && state.session && stored.user.id === state.session.user.id
        && stored.refresh !== state.session.refresh
        && stored.expiresAt > Date.now() + REFRESH_MARGIN_MS) {
      state.session = stored;
      return Promise.resolve();
    }
    // One refresh at a time: a second concurrent one would spend the same refresh token.
    if (!refreshing) {
      const refresh = state.session && state.session.refresh;
      refreshing = request("POST", "/auth/refresh", { refresh_token: refresh }, false)
        .then(takeTokens)
        .finally(() => { refreshing = null; });
    }
    return refreshing;
  }

  async function accessToken() {
    if (!state.session) throw new ApiError(401, "unauthenticated", "sign in first");
    if (Date.now() > state.session.expiresAt - REFRESH_MARGIN_MS) await refreshTokens();
    return state.session.access;
  }

  async function request(method, path, body, auth = true, retried = false) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) headers.Authorization = "Bearer " + (await accessToken());
    let response;
    try {
      response = await fetch(API + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, "unavailable", "cannot reach the server");
    }
    if (response.status === 401 && auth && !retried) {
      await refreshTokens();
      return request(method, path, body, auth, true);
    }
    if (response.status === 204) return null;
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    if (!response.ok) {
      const code = (data && data.code) || "http_" + response.status;
      const detail = (data && data.detail) || response.statusText || "request failed";
      throw new ApiError(response.status, code, detail);
    }
    return data;
  }

  const api = {
    register: (username, password, display_name) =>
      request("POST", "/auth/register", { username, password, display_name: display_name || null }, false),
    login: (username, password) => request("POST", "/auth/login", { username, password }, false),
    logout: () => request("POST", "/auth/logout", { refresh_token: state.session.refresh }),
    conversations: () => request("GET", "/conversations"),
    conversation: (id) => request("GET", `/conversations/${id}`),
    users: (ids) => request("GET", "/users?ids=" + ids.join(",")),
    searchUsers: (prefix) => request("GET", "/users?limit=50&prefix=" + encodeURIComponent(prefix)),
    direct: (userId) => request("POST", "/conversations/direct", { user_id: userId }),
    group: (title, memberIds) => request("POST", "/conversations", { title, member_ids: memberIds }),
    addMembers: (id, userIds) => request("POST", `/conversations/${id}/members`, { user_ids: userIds }),
    page: (id, params) => {
      const q = new URLSearchParams({ limit: String(params.limit || PAGE) });
      if (params.after_seq !== undefined) q.set("after_seq", String(params.after_seq));
      if (params.before_seq !== undefined) q.set("before_seq", String(params.before_seq));
      return request("GET", `/conversations/${id}/messages?${q}`);
    },
    presence: (ids) => request("GET", "/presence?user_ids=" + ids.join(",")),
    search: (query, before) => {
      const q = new URLSearchParams({ q: query, limit: String(SEARCH_PAGE) });
      if (before) q.set("before", before);
      return request("GET", `/search?${q}`);
    },
  };

  async function userByName(username) {
    const found = (await api.searchUsers(username)).find((u) => u.username === username);
    if (!found) throw new ApiError(404, "not_found", `no user named ${username}`);
    state.users.set(found.id, found);
    return found;
  }

  async function ensureUsers(ids) {
    const missing = [...new Set(ids)].filter((id) => id && !state.users.has(id));
    if (!missing.length) return;
    for (const user of await api.users(missing)) state.users.set(user.id, user);
  }

  // ---------------------------------------------------------------------------------------
  // WebSocket: one socket at a time, reopened with backoff; resumes from the cursors
  // ---------------------------------------------------------------------------------------

  function backoffDelay() {
    // Exponential backoff with full jitter, like client/backoff.py.
    const cap = Math.min(10000, 200 * 2 ** Math.min(state.attempts, 16));
    state.attempts += 1;
    return Math.random() * cap;
  }

  function setConn(status, text) {
    const el = $("conn-status");
    el.dataset.state = status;
    el.textContent = text;
  }

  function scheduleReconnect(delay) {
    if (state.stopped || state.reconnectTimer) return;
    setConn("connecting", "reconnecting…");
    state.reconnectTimer = setTimeout(() => {
      state.reconnectTimer = null;
      connect();
    }, delay);
  }

  async function connect() {
    if (state.stopped) return;
    let token;
    try {
      token = await accessToken();
    } catch (err) {
      if (err.code === "unauthenticated" || err.status === 401) return signOut("Session expired: sign in again.");
      return scheduleReconnect(backoffDelay());
    }
    const url = new URL(WS_PATH, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    state.ws = ws;
    let drainDelay = null;
    ws.onopen = () => {
      const cursors = Object.fromEntries(state.cursors);
      ws.send(JSON.stringify({ type: "hello", protocol: 1, token, device_id: deviceId(), cursors }));
    };
    ws.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch (err) { return; }
      if (frame.type === "reconnect") {
        // Draining replica: leave now, come back within the window it grants (spread out).
        drainDelay = Math.random() * (frame.retry_after_ms || 0);
        ws.close(1000, "reconnecting");
        return;
      }
      inOrder(() => onFrame(ws, frame))
        .catch((err) => {
          // A gap history could not fill: resync on a new socket from the unchanged cursors.
          console.warn("frame handling failed; resyncing", err);
          if (ws.readyState === WebSocket.OPEN) ws.close(1000, "resync");
        });
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.wsOpen = false;
      clearInterval(state.pingTimer);
      if (state.stopped) return;
      setConn("offline", "offline");
      if (event.code === 4403) return signOut("This session was signed out.");
      if (event.code === 4400 || event.code === 4426) {
        setConn("offline", "incompatible server");
        return;
      }
      if (event.code === 4401) {
        refreshTokens().then(() => scheduleReconnect(0), () => signOut("Session expired: sign in again."));
        return;
      }
      if (drainDelay !== null) return scheduleReconnect(drainDelay);
      if (event.code === 1012) return scheduleReconnect(Math.random() * 100);
      scheduleReconnect(backoffDelay());
    };
  }

  function sendFrame(frame) {
    if (!state.ws || !state.wsOpen) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  async function onFrame(ws, frame) {
    if (ws !== state.ws) return; // a frame from a socket already replaced
    switch (frame.type) {
      case "hello_ok":
        state.wsOpen = true;
        state.attempts = 0;
        setConn("online", "online");
        clearInterval(state.pingTimer);
        state.pingTimer = setInterval(() => sendFrame({ type: "ping" }), PING_EVERY_MS);
        // Unacked sends go out again with the same client_msg_id: stored once either way.
        for (const p of state.pending.values()) sendFrame(p.frame);
        if (state.everOpen) refreshAfterResume();
        state.everOpen = true;
        if (state.current) markRead(state.current); // a read that failed while offline
        break;
      case "message":
        await applyMessage(frame);
        break;
      case "ack":
        await onAck(frame);
        break;
      case "receipt":
        onReceipt(frame);
        break;
      case "typing":
        onTyping(frame);
        break;
      case "presence":
        if (frame.online) state.online.add(frame.user_id);
        else state.online.delete(frame.user_id);
        renderConversations();
        renderThreadHead();
        break;
      case "conversation":
        await onConversationEvent(frame);
        break;
      case "sync_done":
        setConn("online", "online");
        break;
      case "error":
        onErrorFrame(frame);
        break;
      case "message_delta":
        onDelta(frame);
        break;
      default:
        break; // pong, history_page, and frames newer than this page
    }
  }

  // Receipts and read positions are not replayed on resume (messages are): refetch them.
  async function refreshAfterResume() {
    try {
      for (const s of await api.conversations()) {
        const c = state.convs.get(s.id);
        if (!c) continue;
        c.read_seq = Math.max(c.read_seq || 0, s.read_seq || 0);
        c.last_seq = Math.max(c.last_seq || 0, s.last_seq || 0);
        c.unread = s.id === state.current ? 0 : Math.max(0, c.last_seq - c.read_seq);
      }
      if (state.current) await loadConversation(state.current);
    } catch (err) {
      return; // best effort: the next receipt or reconnect corrects it
    }
    renderConversations();
    if (state.current) renderMessages(false);
  }

  // ---------------------------------------------------------------------------------------
  // Messages: exactly once, in seq order per conversation
  // ---------------------------------------------------------------------------------------

  async function fetchRange(conversationId, after, until) {
    const out = [];
    let cursor = after;
    while (cursor < until) {
      const page = await api.page(conversationId, { after_seq: cursor, limit: Math.min(500, until - cursor) });
      out.push(...page.messages.filter((m) => m.seq <= until));
      if (!page.messages.length || !page.has_more) break;
      cursor = page.messages[page.messages.length - 1].seq;
    }
    return out;
  }

  async function applyMessage(m) {
    const conv = m.conversation_id;
    const cursor = state.cursors.has(conv) ? state.cursors.get(conv) : 0;
    if (m.seq <= cursor) return; // a duplicate (replayed after a reconnect)
    if (!state.convs.has(conv)) await loadConversation(conv);
    await ensureUsers([m.sender_id, ...(m.kind === "system" ? systemUserIds(m.body) : [])]);
    const box = state.messages.get(conv);
    let batch = [m];
    // Only a message list on screen needs the gap filled; for the others the summary
    // (last message, unread = last_seq - read_seq) is right without the missing messages.
    if (box && box.loaded && m.seq > cursor + 1) {
      const missing = await fetchRange(conv, cursor, m.seq - 1);
      batch = [...missing, m];
      batch.forEach((x, i) => {
        if (x.seq !== cursor + 1 + i) throw new Error(`gap in conversation ${conv} not filled`);
      });
    }
    state.cursors.set(conv, m.seq);
    const summary = state.convs.get(conv);
    const me = state.session.user.id;
    for (const msg of batch) {
      if (box && box.loaded && !box.list.some((x) => x.seq === msg.seq)) box.list.push(msg);
      if (msg.sender_id === me) summary.read_seq = Math.max(summary.read_seq || 0, msg.seq);
      else clearTyping(conv, msg.sender_id);
    }
    summary.last_message = m;
    summary.last_seq = Math.max(summary.last_seq || 0, m.seq);
    if (m.sender_id !== me && m.kind !== "system") notify(summary, m);
    if (conv === state.current && document.visibilityState === "visible") {
      renderMessages(true);
      markRead(conv);
    } else {
      summary.unread = Math.max(0, summary.last_seq - (summary.read_seq || 0));
      if (conv === state.current) renderMessages(false);
    }
    renderConversations();
  }

  // A desktop notification for a message the user is not looking at. Permission is asked on
  // a user gesture (browsers ignore or penalise asking unprompted), see askNotifications.
  function notify(c, m) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (c.id === state.current && document.visibilityState === "visible") return;
    const sender = state.users.get(m.sender_id);
    const who = sender ? sender.display_name || sender.username : "Someone";
    const title = c.kind === "group" ? `${who} in ${convName(c)}` : who;
    try {
      const n = new Notification(title, { body: preview(m), tag: `warbler-${c.id}` });
      n.onclick = () => { window.focus(); openConversation(c.id); n.close(); };
    } catch (err) { /* some browsers allow notifications only from a service worker */ }
  }

  function askNotifications() {
    if ("Notification" in window && Notification.permission === "default") {
      Notification.requestPermission().catch(() => {});
    }
  }

  // Run fn after every frame already received, so a history load and live frames never race.
  function inOrder(fn) {
    const result = state.frames.then(fn);
    state.frames = result.catch(() => {});
    return result;
  }

  async function onAck(ack) {
    const pending = state.pending.get(ack.client_msg_id);
    if (!pending) return;
    state.pending.delete(ack.client_msg_id);
    const f = pending.frame;
    await applyMessage({
      conversation_id: ack.conversation_id,
      seq: ack.seq,
      sender_id: state.session.user.id,
      kind: f.kind,
      body: f.body,
      created_at: ack.created_at,
      client_msg_id: ack.client_msg_id,
    });
    if (ack.conversation_id === state.current) renderMessages(true);
  }

  function onErrorFrame(frame) {
    const pending = frame.id !== null && frame.id !== undefined ? state.pending.get(String(frame.id)) : null;
    if (!pending) {
      console.warn("server error", frame.code, frame.message);
      return;
    }
    if (frame.code === "unavailable" || frame.code === "internal_error" || frame.code === "stale_epoch") {
      setTimeout(() => { if (state.pending.has(pending.frame.client_msg_id)) sendFrame(pending.frame); }, 500 + Math.random() * 1000);
      return;
    }
    pending.failed = frame.message;
    state.pending.delete(pending.frame.client_msg_id);
    state.failed.push(pending);
    renderMessages(true);
  }

  function sendMessage(text) {
    const conv = state.current;
    if (!conv || !text.trim()) return;
    const id = randomId();
    const frame = { type: "send", id, conversation_id: conv, client_msg_id: id, kind: "text", body: text };
    state.pending.set(id, { frame, conversationId: conv, at: new Date().toISOString() });
    sendFrame(frame); // if offline, hello_ok sends it
    sendTyping(false);
    renderMessages(true);
  }

  let markTimer = null;
  function markRead(conv) {
    // Coalesce: one read frame for a burst of messages.
    clearTimeout(markTimer);
    markTimer = setTimeout(() => {
      const summary = state.convs.get(conv);
      if (!summary || !summary.last_seq || summary.read_seq >= summary.last_seq) return;
      if (sendFrame({ type: "read", conversation_id: conv, seq: summary.last_seq })) {
        summary.read_seq = summary.last_seq;
        summary.unread = 0;
        renderConversations();
      }
    }, 150);
  }

  function onReceipt(r) {
    if (!state.receipts.has(r.conversation_id)) state.receipts.set(r.conversation_id, new Map());
    const map = state.receipts.get(r.conversation_id);
    map.set(r.user_id, Math.max(map.get(r.user_id) || 0, r.read_seq));
    const summary = state.convs.get(r.conversation_id);
    if (summary && r.user_id === state.session.user.id) {
      summary.read_seq = Math.max(summary.read_seq || 0, r.read_seq);
      summary.unread = Math.max(0, summary.last_seq - summary.read_seq);
      renderConversations();
    }
    if (r.conversation_id === state.current) renderMessages(false);
  }

  function onTyping(t) {
    if (t.user_id === state.session.user.id) return;
    if (!state.typing.has(t.conversation_id)) state.typing.set(t.conversation_id, new Map());
    const map = state.typing.get(t.conversation_id);
    if (t.active) map.set(t.user_id, Date.now() + TYPING_TTL_MS);
    else map.delete(t.user_id);
    renderTyping();
    if (t.active) setTimeout(renderTyping, TYPING_TTL_MS + 50);
  }

  function clearTyping(conv, userId) {
    const map = state.typing.get(conv);
    if (map && map.delete(userId) && conv === state.current) renderTyping();
  }

  function sendTyping(active) {
    const now = Date.now();
    if (active && now - state.lastTypingSent < TYPING_SEND_EVERY_MS) return;
    if (!active && state.lastTypingSent === 0) return;
    state.lastTypingSent = active ? now : 0;
    if (state.current) sendFrame({ type: "typing", conversation_id: state.current, active });
  }

  async function onConversationEvent(e) {
    if (e.event === "removed") {
      state.convs.delete(e.conversation_id);
      if (state.current === e.conversation_id) closeThread();
      renderConversations();
      return;
    }
    const conv = e.conversation || (await api.conversation(e.conversation_id));
    const known = state.convs.get(conv.id);
    mergeConversation(conv);
    // New to this page: its messages come from cursor 0 (the list shows the count unread).
    if (!known && !state.cursors.has(conv.id)) state.cursors.set(conv.id, 0);
    await ensureUsers(conv.members.map((m) => m.user_id));
    renderConversations();
    if (conv.id === state.current) renderThreadHead();
  }

  // ---------------------------------------------------------------------------------------
  // Conversations
  // ---------------------------------------------------------------------------------------

  function mergeConversation(conv) {
    const old = state.convs.get(conv.id) || { unread: 0, read_seq: 0, last_message: null };
    const merged = Object.assign({}, old, conv);
    const me = state.session.user.id;
    if (conv.members) {
      const peer = conv.members.find((m) => m.user_id !== me);
      if (conv.kind === "direct" && peer) merged.peer_id = peer.user_id;
      const receipts = state.receipts.get(conv.id) || new Map();
      for (const m of conv.members) receipts.set(m.user_id, Math.max(receipts.get(m.user_id) || 0, m.read_seq || 0));
      state.receipts.set(conv.id, receipts);
      const mine = conv.members.find((m) => m.user_id === me);
      if (mine) merged.read_seq = Math.max(old.read_seq || 0, mine.read_seq || 0);
    }
    state.convs.set(conv.id, merged);
    return merged;
  }

  async function loadConversation(id) {
    const conv = await api.conversation(id);
    mergeConversation(conv);
    await ensureUsers(conv.members.map((m) => m.user_id));
  }

  function convName(c) {
    if (!c) return "";
    if (c.kind === "group") return c.title || `Group ${c.id}`;
    const peer = state.users.get(c.peer_id);
    return peer ? peer.display_name || peer.username : "Direct chat";
  }

  function preview(m) {
    if (!m) return "";
    if (m.kind === "system") return describeSystem(m.body);
    const text = botOf(m.body) ? m.body.text || "…" : typeof m.body === "string" ? m.body : JSON.stringify(m.body);
    const mine = state.session && m.sender_id === state.session.user.id;
    return (mine ? "You: " : "") + text;
  }

  // System messages (membership changes). docs/protocol.md names the kind in "event"
  // (members_added, ...); the conversation entity writes "op" (added, ...): read both.
  function describeSystem(body) {
    if (!body || typeof body !== "object") return String(body);
    const name = (id) => { const u = state.users.get(id); return u ? u.display_name || u.username : `user ${id}`; };
    const names = (ids) => (ids || []).map(name).join(", ");
    switch (body.event || body.op) {
      case "created": return `${name(body.by)} created “${body.title || "the group"}”`;
      case "members_added": case "added": return `${name(body.by)} added ${names(body.user_ids)}`;
      case "member_removed": case "removed": return `${name(body.by)} removed ${name(body.user_id)}`;
      case "member_left": case "left": return `${name(body.user_id)} left`;
      case "renamed": return `${name(body.by)} renamed the group to “${body.title}”`;
      case "role_changed": case "role": return `${name(body.by)} made ${name(body.user_id)} ${body.role}`;
      default: return "conversation updated";
    }
  }

  // User ids named in system messages, so their names can be loaded before rendering.
  function systemUserIds(body) {
    if (!body || typeof body !== "object") return [];
    return [body.by, body.user_id, ...(body.user_ids || [])].filter((x) => Number.isInteger(x));
  }

  function hue(n) { return (Number(n) * 47) % 360; }

  function avatar(el, label, seed) {
    el.textContent = (label || "?").trim().slice(0, 1).toUpperCase();
    el.style.background = `hsl(${hue(seed)} 65% 52%)`;
  }

  function timeOf(iso) {
    const d = new Date(iso);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function renderConversations() {
    const list = $("conv-list");
    const convs = [...state.convs.values()].sort((a, b) => {
      const ta = a.last_message ? Date.parse(a.last_message.created_at) : 0;
      const tb = b.last_message ? Date.parse(b.last_message.created_at) : 0;
      return tb - ta || b.id - a.id;
    });
    $("conv-empty").hidden = convs.length > 0;
    renderTitle(convs);
    list.replaceChildren(...convs.map((c) => {
      const name = convName(c);
      const av = h("span", { class: "avatar" });
      avatar(av, name, c.kind === "direct" ? c.peer_id : c.id + 1000);
      const online = c.kind === "direct" && state.online.has(c.peer_id);
      const unread = c.id === state.current ? 0 : c.unread || 0;
      return h("li", {
        class: "conv" + (c.id === state.current ? " active" : "") + (unread ? " has-unread" : ""),
        dataset: { id: String(c.id) },
        tabindex: "0",
        onclick: () => openConversation(c.id),
        onkeydown: (e) => { if (e.key === "Enter") openConversation(c.id); },
      },
      h("span", { class: "avatar-wrap" }, av, online ? h("span", { class: "dot", title: "online" }) : null),
      h("span", { class: "conv-text" },
        h("span", { class: "conv-top" },
          h("span", { class: "conv-name" }, name),
          c.kind === "group" ? h("span", { class: "tag" }, "group") : null,
          h("span", { class: "conv-time" }, c.last_message ? timeOf(c.last_message.created_at) : "")),
        h("span", { class: "conv-bottom" },
          h("span", { class: "conv-preview" }, preview(c.last_message)),
          unread ? h("span", { class: "badge", "aria-label": `${unread} unread` }, String(unread)) : null)));
    }));
  }

  // The tab says how many messages wait, so a background tab shows it.
  function renderTitle(convs) {
    let unread = 0;
    for (const c of convs) {
      const seen = c.id === state.current && document.visibilityState === "visible";
      if (!seen) unread += c.unread || 0;
    }
    document.title = unread ? `(${unread}) Warbler` : "Warbler";
  }

  function renderThreadHead() {
    const c = state.convs.get(state.current);
    if (!c) return;
    const name = convName(c);
    $("thread-name").textContent = name;
    avatar($("thread-avatar"), name, c.kind === "direct" ? c.peer_id : c.id + 1000);
    let sub;
    if (c.kind === "group") {
      const n = c.members ? c.members.length : 0;
      sub = `${n} member${n === 1 ? "" : "s"}`;
    } else {
      const peer = state.users.get(c.peer_id);
      sub = (peer ? "@" + peer.username : "") + (state.online.has(c.peer_id) ? " · online" : "");
    }
    $("thread-sub").textContent = sub;
    $("add-members-btn").hidden = !canManage(c);
  }

  // Owners and admins add members; the server answers 403 to anyone else, so others never
  // see the button.
  function canManage(c) {
    if (!c || c.kind !== "group" || !c.members) return false;
    const mine = c.members.find((m) => m.user_id === state.session.user.id);
    return !!mine && (mine.role === "owner" || mine.role === "admin");
  }

  // Message text with its http(s) links as <a> elements. Built from text nodes and elements,
  // never parsed as HTML; only http and https URLs become links (no javascript: or data:).
  const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;
  function linkify(text) {
    const parts = [];
    let last = 0;
    for (const match of text.matchAll(URL_RE)) {
      // Trailing punctuation usually ends the sentence, not the URL.
      const url = match[0].replace(/[.,;:!?)\]]+$/, "");
      let href = null;
      try {
        const parsed = new URL(url);
        if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
      } catch (err) { /* not a URL after all: stays text */ }
      if (!href) continue;
      parts.push(text.slice(last, match.index));
      parts.push(h("a", { href, target: "_blank", rel: "noopener noreferrer nofollow" }, url));
      last = match.index + url.length;
    }
    parts.push(text.slice(last));
    return parts.filter((p) => p !== "");
  }

  function renderTyping() {
    const map = state.typing.get(state.current);
    const now = Date.now();
    const names = [];
    if (map) {
      for (const [userId, until] of map) {
        if (until < now) { map.delete(userId); continue; }
        const u = state.users.get(userId);
        names.push(u ? u.display_name || u.username : "someone");
      }
    }
    const el = $("typing");
    el.textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
  }

  function renderMessages(scroll) {
    const conv = state.current;
    const box = state.messages.get(conv);
    const listEl = $("message-list");
    const scroller = $("messages");
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    if (!box) { listEl.replaceChildren(); return; }
    const me = state.session.user.id;
    box.list.sort((a, b) => a.seq - b.seq);
    const receipts = state.receipts.get(conv) || new Map();
    const c = state.convs.get(conv);
    const others = [...receipts.entries()].filter(([uid]) => uid !== me);
    let lastMine = null;
    for (const m of box.list) if (m.sender_id === me && m.kind !== "system") lastMine = m;
    const items = [];
    let prevSender = null;
    let prevDay = null;
    for (const m of box.list) {
      const day = new Date(m.created_at).toDateString();
      if (day !== prevDay) {
        items.push(h("li", { class: "day" }, new Date(m.created_at).toLocaleDateString([], { weekday: "short", month: "short", day: "numeric" })));
        prevDay = day;
        prevSender = null;
      }
      if (m.kind === "system") {
        items.push(h("li", { class: "system", dataset: { seq: String(m.seq) } }, describeSystem(m.body)));
        prevSender = null;
        continue;
      }
      const mine = m.sender_id === me;
      const sender = state.users.get(m.sender_id);
      const showName = !mine && c && c.kind === "group" && prevSender !== m.sender_id;
      const bot = botOf(m.body);
      const text = bot ? m.body.text || "…" : typeof m.body === "string" ? m.body : JSON.stringify(m.body);
      const found = state.found && state.found.conv === conv && state.found.seq === m.seq;
      const li = h("li", { class: "msg " + (mine ? "mine" : "theirs") + (prevSender === m.sender_id ? " cont" : "") + (bot ? " bot" : "") + (found ? " found" : ""), dataset: { seq: String(m.seq), sender: String(m.sender_id) } },
        showName || bot ? h("span", { class: "sender", style: `color: hsl(${hue(m.sender_id)} 55% 40%)` }, bot ? h("span", { class: "bot-badge" }, "BOT") : null, sender ? sender.display_name || sender.username : `user ${m.sender_id}`) : null,
        h("span", { class: "bubble" }, h("span", { class: "body" }, linkify(text)), bot ? botExtras(m, bot) : null, h("span", { class: "meta" }, bot && !bot.final ? "answering…" : timeOf(m.created_at))));
      if (mine && lastMine && m.seq === lastMine.seq) {
        const readers = others.filter(([, seq]) => seq >= m.seq);
        let label = "Sent";
        if (readers.length && c && c.kind === "direct") label = "Seen";
        else if (readers.length) label = `Seen by ${readers.length}`;
        li.append(h("span", { class: "receipt" + (readers.length ? " seen" : ""), "data-receipt": label }, label === "Sent" ? "✓ Sent" : "✓✓ " + label));
      }
      items.push(li);
      prevSender = m.sender_id;
    }
    for (const p of state.pending.values()) {
      if (p.conversationId !== conv) continue;
      items.push(h("li", { class: "msg mine pending" },
        h("span", { class: "bubble" }, h("span", { class: "body" }, p.frame.body), h("span", { class: "meta" }, state.wsOpen ? "sending…" : "waiting for connection…"))));
    }
    for (const p of state.failed) {
      if (p.conversationId !== conv) continue;
      items.push(h("li", { class: "msg mine failed" },
        h("span", { class: "bubble" }, h("span", { class: "body" }, p.frame.body), h("span", { class: "meta" }, "not sent: " + p.failed))));
    }
    listEl.replaceChildren(...items);
    $("older-btn").hidden = !box.hasMore;
    if (scroll || atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  // ChatAI (docs/chatai.md): a bot's answer is a json message {text, bot: {...}} that grows
  // through message_delta frames (the whole text so far; final with the stored body).
  function botOf(body) {
    return body && typeof body === "object" && body.bot && typeof body.bot === "object" ? body.bot : null;
  }

  function botExtras(m, bot) {
    const parts = [];
    if (bot.final && bot.sources && bot.sources.length) {
      parts.push(h("span", { class: "bot-sources" }, "Sources: " + bot.sources.map((s) => s.heading ? `${s.document} › ${s.heading}` : s.document).join("; ")));
    }
    if (bot.final && !bot.handoff && !bot.handback) {
      const btn = h("button", { type: "button", class: "ghost small bot-human" }, "Talk to a human");
      btn.addEventListener("click", () => sendMessage("I would like to talk to a human, please."));
      parts.push(btn);
    }
    return parts.length ? h("span", { class: "bot-extras" }, ...parts) : null;
  }

  function onDelta(d) {
    let box = state.messages.get(d.conversation_id);
    if (!box) return; // not loaded yet: history will bring the final body
    const body = d.final && d.body ? d.body : { text: d.text, bot: { streaming: true } };
    const m = box.list.find((x) => x.seq === d.seq);
    if (m) m.body = body;
    else box.list.push({ conversation_id: d.conversation_id, seq: d.seq, sender_id: d.sender_id, kind: "json", body, created_at: new Date().toISOString(), client_msg_id: "" });
    if (state.current === d.conversation_id) renderMessages(false);
  }

  async function openConversation(id) {
    sendTyping(false);
    state.current = id;
    state.found = null;
    $("thread-empty").hidden = true;
    $("thread").hidden = false;
    // On a narrow screen the thread replaces the list (the back button returns to it).
    $("chat-view").classList.add("thread-open");
    try {
      await loadConversation(id);
      // In the frame queue: the page then holds every message applied so far, and the live
      // frames after it continue it with no hole.
      await inOrder(async () => {
        const page = await api.page(id, { limit: PAGE });
        await ensureUsers(page.messages.flatMap((m) => [m.sender_id, ...systemUserIds(m.body)]));
        state.messages.set(id, { list: page.messages, loaded: true, hasMore: page.has_more });
        const c = state.convs.get(id);
        const last = page.messages.length ? page.messages[page.messages.length - 1] : null;
        if (last) {
          c.last_seq = Math.max(c.last_seq || 0, last.seq);
          if (!c.last_message || c.last_message.seq <= last.seq) c.last_message = last;
          if ((state.cursors.get(id) || 0) < last.seq) state.cursors.set(id, last.seq);
        }
      });
    } catch (err) {
      showSidebarError(err.message);
      return;
    }
    if (state.current !== id) return;
    renderThreadHead();
    renderMessages(true);
    renderTyping();
    renderConversations();
    markRead(id);
    const c = state.convs.get(id);
    if (c.kind === "direct" && c.peer_id) {
      api.presence([c.peer_id]).then((p) => {
        if (p.online.includes(c.peer_id)) state.online.add(c.peer_id); else state.online.delete(c.peer_id);
        renderThreadHead();
        renderConversations();
      }, () => {});
    }
    $("message-input").focus();
  }

  async function loadOlder(limit = PAGE) {
    const id = state.current;
    const box = state.messages.get(id);
    if (!box || !box.list.length) return;
    const scroller = $("messages");
    const before = scroller.scrollHeight;
    const page = await api.page(id, { before_seq: box.list[0].seq, limit });
    await ensureUsers(page.messages.flatMap((m) => [m.sender_id, ...systemUserIds(m.body)]));
    if (state.current !== id) return;
    box.list = [...page.messages, ...box.list];
    box.hasMore = page.has_more;
    renderMessages(false);
    scroller.scrollTop = scroller.scrollHeight - before;
  }

  function closeThread() {
    sendTyping(false);
    state.current = null;
    $("thread").hidden = true;
    $("thread-empty").hidden = false;
    $("chat-view").classList.remove("thread-open");
    renderConversations();
  }

  // ---------------------------------------------------------------------------------------
  // Search (GET /v1/search): results replace the conversation list until closed
  // ---------------------------------------------------------------------------------------

  async function runSearch(more) {
    const query = more ? state.search.query : $("search-input").value.trim();
    if (!query) return closeSearch();
    // A newer search (or close) wins over an answer still on its way.
    const token = ++state.search.token;
    $("chat-view").classList.add("searching");
    $("search-panel").hidden = false;
    $("search-close").hidden = false;
    setSearchStatus(more ? "Loading more…" : "Searching…", false);
    $("search-more").hidden = true;
    try {
      const page = await api.search(query, more ? state.search.next : null);
      await ensureUsers(page.hits.map((hit) => hit.sender_id));
      if (token !== state.search.token) return;
      state.search.query = query;
      state.search.hits = more ? [...state.search.hits, ...page.hits] : page.hits;
      state.search.next = page.next;
      renderSearch();
    } catch (err) {
      if (token !== state.search.token) return;
      setSearchStatus(err.message, true);
      // A failed new search shows no stale results; a failed "more" keeps the button to retry.
      if (!more) {
        state.search = { query, hits: [], next: null, token };
        $("search-results").replaceChildren();
      }
      $("search-more").hidden = !more;
    }
  }

  function closeSearch() {
    state.search = { query: "", hits: [], next: null, token: state.search.token + 1 };
    $("search-input").value = "";
    $("search-results").replaceChildren();
    $("search-panel").hidden = true;
    $("search-close").hidden = true;
    $("chat-view").classList.remove("searching");
  }

  function setSearchStatus(text, error) {
    const el = $("search-status");
    el.textContent = text;
    el.classList.toggle("error", error);
  }

  function renderSearch() {
    const { hits, next, query } = state.search;
    setSearchStatus(hits.length ? `${hits.length}${next ? "+" : ""} result${hits.length === 1 ? "" : "s"} for “${query}”` : `No messages found for “${query}”`, false);
    $("search-more").hidden = !next;
    $("search-results").replaceChildren(...hits.map((hit) => {
      const sender = state.users.get(hit.sender_id);
      const who = hit.sender_id === state.session.user.id ? "You" : sender ? sender.display_name || sender.username : `user ${hit.sender_id}`;
      const open = () => openHit(hit).catch((err) => showSidebarError(err.message));
      return h("li", {
        class: "hit",
        dataset: { conversation: String(hit.conversation_id), seq: String(hit.seq) },
        tabindex: "0",
        onclick: open,
        onkeydown: (e) => { if (e.key === "Enter") open(); },
      },
      h("span", { class: "hit-top" },
        h("span", { class: "hit-conv" }, convName(state.convs.get(hit.conversation_id)) || `Conversation ${hit.conversation_id}`),
        h("span", { class: "hit-time" }, dateTimeOf(hit.created_at))),
      h("span", { class: "hit-sender" }, who),
      h("span", { class: "hit-snippet" }, snippetParts(hit)));
    }));
  }

  // The snippet as text and <mark> elements. The server's offsets count code points (Python
  // strings); JavaScript strings count UTF-16 units, so slice an array of code points.
  function snippetParts(hit) {
    const chars = Array.from(hit.snippet);
    const parts = [];
    if (hit.snippet && !hit.body.startsWith(hit.snippet)) parts.push("…");
    let last = 0;
    for (const [start, end] of [...hit.highlights].sort((a, b) => a[0] - b[0])) {
      if (start < last || end <= start) continue;
      parts.push(chars.slice(last, start).join(""), h("mark", {}, chars.slice(start, end).join("")));
      last = end;
    }
    parts.push(chars.slice(last).join(""));
    if (hit.snippet && !hit.body.endsWith(hit.snippet)) parts.push("…");
    return parts.filter((p) => p !== "");
  }

  function dateTimeOf(iso) {
    return new Date(iso).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  // Open the hit's conversation and show the message: the thread holds a contiguous run up
  // to the newest message, so an older hit is reached by loading older history down to it.
  async function openHit(hit) {
    const id = hit.conversation_id;
    await openConversation(id);
    for (let i = 0; i < REVEAL_MAX_LOADS; i++) {
      const box = state.messages.get(id);
      if (state.current !== id || !box || !box.list.length) return;
      if (box.list[0].seq <= hit.seq || !box.hasMore) break;
      await loadOlder(Math.min(HISTORY_MAX, box.list[0].seq - hit.seq + PAGE));
    }
    if (state.current !== id) return;
    state.found = { conv: id, seq: hit.seq };
    renderMessages(false);
    const el = $("message-list").querySelector(`.msg[data-seq="${hit.seq}"]`);
    if (el) el.scrollIntoView({ block: "center" });
  }

  function showSidebarError(text) {
    const el = $("sidebar-error");
    el.textContent = text;
    el.hidden = !text;
    if (text) setTimeout(() => { if (el.textContent === text) el.hidden = true; }, 5000);
  }

  // ---------------------------------------------------------------------------------------
  // Session
  // ---------------------------------------------------------------------------------------

  async function startChat() {
    $("auth-view").hidden = true;
    $("chat-view").hidden = false;
    const me = state.session.user;
    $("me-name").textContent = me.display_name || me.username;
    avatar($("me-avatar"), me.display_name || me.username, me.id);
    state.stopped = false;
    const summaries = await api.conversations();
    for (const s of summaries) {
      state.convs.set(s.id, Object.assign({}, s));
      // Start "from now": the list already shows the last message and the unread count.
      if (!state.cursors.has(s.id)) state.cursors.set(s.id, s.last_seq || 0);
    }
    await ensureUsers(summaries.map((s) => s.peer_id).filter(Boolean));
    const peers = summaries.map((s) => s.peer_id).filter(Boolean);
    if (peers.length) {
      try { for (const id of (await api.presence(peers)).online) state.online.add(id); } catch (err) { /* optional */ }
    }
    renderConversations();
    connect();
  }

  function resetState() {
    state.stopped = true;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    clearInterval(state.pingTimer);
    if (state.ws) { const ws = state.ws; state.ws = null; ws.close(1000, "sign out"); }
    for (const key of ["cursors", "convs", "messages", "receipts", "typing", "pending"]) state[key].clear();
    state.found = null;
    state.online.clear();
    state.failed = [];
    state.current = null;
    state.wsOpen = false;
    state.everOpen = false;
  }

  function signOut(message) {
    resetState();
    closeSearch();
    state.session = null;
    saveSession();
    closeThread();
    $("chat-view").hidden = true;
    $("auth-view").hidden = false;
    showAuthError(message || "");
  }

  function showAuthError(text) {
    const el = $("auth-error");
    el.textContent = text;
    el.hidden = !text;
  }

  let registering = false;
  function setMode(register) {
    registering = register;
    $("tab-login").classList.toggle("active", !register);
    $("tab-register").classList.toggle("active", register);
    $("tab-login").setAttribute("aria-selected", String(!register));
    $("tab-register").setAttribute("aria-selected", String(register));
    $("display-name-row").hidden = !register;
    $("auth-submit").textContent = register ? "Create account" : "Sign in";
    $("auth-password").autocomplete = register ? "new-password" : "current-password";
    showAuthError("");
  }

  async function onAuthSubmit(event) {
    event.preventDefault();
    const username = $("auth-username").value.trim();
    const password = $("auth-password").value;
    const button = $("auth-submit");
    button.disabled = true;
    showAuthError("");
    try {
      if (registering) await api.register(username, password, $("auth-display-name").value.trim());
      takeTokens(await api.login(username, password));
      $("auth-password").value = "";
      await startChat();
    } catch (err) {
      showAuthError(err.code === "unauthenticated" ? "Wrong username or password." : err.message);
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------

  function openGroupDialog(mode) {
    const dialog = $("group-dialog");
    dialog.dataset.mode = mode;
    $("group-dialog-title").textContent = mode === "create" ? "New group" : "Add members";
    $("group-title-row").hidden = mode !== "create";
    $("group-title").required = mode === "create";
    $("group-submit").textContent = mode === "create" ? "Create" : "Add";
    $("group-title").value = "";
    $("group-members").value = "";
    $("group-error").hidden = true;
    dialog.showModal();
    (mode === "create" ? $("group-title") : $("group-members")).focus();
  }

  async function onGroupSubmit(event) {
    event.preventDefault();
    const dialog = $("group-dialog");
    const names = $("group-members").value.split(",").map((s) => s.trim()).filter(Boolean);
    try {
      const ids = [];
      for (const name of names) ids.push((await userByName(name)).id);
      let conv;
      if (dialog.dataset.mode === "create") {
        conv = await api.group($("group-title").value.trim(), ids);
      } else {
        if (!ids.length) throw new ApiError(422, "validation_error", "name at least one user");
        conv = await api.addMembers(state.current, ids);
      }
      mergeConversation(conv);
      if (!state.cursors.has(conv.id)) state.cursors.set(conv.id, 0);
      await ensureUsers(conv.members.map((m) => m.user_id));
      dialog.close();
      renderConversations();
      await openConversation(conv.id);
    } catch (err) {
      $("group-error").textContent = err.message;
      $("group-error").hidden = false;
    }
  }

  async function onNewDirect(event) {
    event.preventDefault();
    const input = $("new-direct-input");
    const name = input.value.trim();
    if (!name) return;
    try {
      const user = await userByName(name);
      if (user.id === state.session.user.id) throw new ApiError(400, "bad_request", "that is you");
      const conv = await api.direct(user.id);
      mergeConversation(conv);
      if (!state.cursors.has(conv.id)) state.cursors.set(conv.id, conv.last_seq || 0);
      input.value = "";
      renderConversations();
      await openConversation(conv.id);
    } catch (err) {
      showSidebarError(err.message);
    }
  }

  function autosize(el) {
    el.style.height = "auto";
    el.style.height = Math.min(el.scrollHeight, 160) + "px";
  }

  function wire() {
    $("tab-login").addEventListener("click", () => setMode(false));
    $("tab-register").addEventListener("click", () => setMode(true));
    $("auth-form").addEventListener("submit", onAuthSubmit);
    $("logout-btn").addEventListener("click", async () => {
      try { await api.logout(); } catch (err) { /* signing out locally regardless */ }
      signOut("");
    });
    $("new-direct-form").addEventListener("submit", onNewDirect);
    $("new-group-btn").addEventListener("click", () => openGroupDialog("create"));
    $("add-members-btn").addEventListener("click", () => openGroupDialog("add"));
    $("back-btn").addEventListener("click", closeThread);
    // The first click or key in the chat counts as the gesture that may ask for notifications.
    $("chat-view").addEventListener("click", askNotifications, { once: true });
    $("chat-view").addEventListener("keydown", askNotifications, { once: true });
    $("group-form").addEventListener("submit", onGroupSubmit);
    $("group-cancel").addEventListener("click", () => $("group-dialog").close());
    $("older-btn").addEventListener("click", () => loadOlder().catch((err) => showSidebarError(err.message)));
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      runSearch(false);
    });
    $("search-input").addEventListener("input", () => { if (!$("search-input").value) closeSearch(); });
    $("search-input").addEventListener("keydown", (event) => { if (event.key === "Escape") closeSearch(); });
    $("search-close").addEventListener("click", closeSearch);
    $("search-more").addEventListener("click", () => runSearch(true));
    const input = $("message-input");
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      sendMessage(input.value);
      input.value = "";
      autosize(input);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    input.addEventListener("input", () => {
      autosize(input);
      sendTyping(input.value.length > 0);
    });
    input.addEventListener("blur", () => sendTyping(false));
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && state.current) {
        renderMessages(false);
        markRead(state.current);
      }
      renderConversations();
    });
  }

  async function boot() {
    wire();
    setMode(false);
    const saved = localStorage.getItem(SESSION_KEY);
    if (saved) {
      try {
        state.session = JSON.parse(saved);
        await refreshTokens();
        await startChat();
        return;
      } catch (err) {
        state.session = null;
        saveSession();
      }
    }
    $("auth-view").hidden = false;
  }

  // Exposed for tests and debugging: read-only views of the state.
  window.warbler = {
    cursors: () => Object.fromEntries(state.cursors),
    connected: () => state.wsOpen,
    dropSocket: () => { if (state.ws) state.ws.close(1000, "test"); },
  };

  boot();
})();
