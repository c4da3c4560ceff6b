/*
 * <async-action-progress>: live progress of one django-async-actions action.
 *
 * No dependencies, no build step. Listens on a WebSocket (reconnecting with backoff);
 * while the socket is down it polls the status JSON every data-poll-interval ms. When
 * the action ends it goes to data-result-url. Text from the server is set with
 * textContent, never parsed as HTML. Each change is also dispatched as an
 * "aa:update" event (detail: the action snapshot) for site scripts.
 */
(function () {
  "use strict";
  if (!window.customElements || window.customElements.get("async-action-progress")) return;

  var TERMINAL = { succeeded: true, failed: true, cancelled: true };
  // English defaults; the page hands the active language's strings in data-strings.
  var STRINGS = {
    pending: "Waiting to start",
    running: "Running",
    succeeded: "Done",
    failed: "Failed",
    cancelled: "Cancelled",
    cancelling: "Cancelling…",
    cancel: "Cancel",
    queued: "Queued",
    elapsed: "Elapsed %s",
    eta: "About %s left",
    not_found: "This action was not found. It may have been removed.",
    cancel_failed: "Could not cancel: the server did not answer. Try again."
  };
  var MAX_BACKOFF_MS = 30000;

  function formatDuration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    var h = Math.floor(seconds / 3600);
    var m = Math.floor((seconds % 3600) / 60);
    var s = seconds % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return h ? h + ":" + pad(m) + ":" + pad(s) : m + ":" + pad(s);
  }

  function cookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }

  class AsyncActionProgress extends HTMLElement {
    connectedCallback() {
      if (this._started) return;
      this._started = true;
      // The processing page's fallback (its <noscript data-aa-fallback> parts) stays off
      // while this is set: the element runs.
      this.setAttribute("data-aa-live", "");
      var d = this.dataset;
      this.statusUrl = d.statusUrl;
      this.resultUrl = d.resultUrl;
      this.cancelUrl = d.cancelUrl;
      this.t = Object.assign({}, STRINGS);
      try { Object.assign(this.t, JSON.parse(d.strings || "{}")); } catch (e) { /* defaults */ }
      this.wsPath = d.wsPath;
      this.pollInterval = Math.max(250, parseInt(d.pollInterval, 10) || 2000);
      this.seq = -1;
      this.status = d.status || "pending";
      this.percent = 0;
      this.failures = 0;
      this.done = false;
      this.polling = null;
      this.socket = null;
      this.elapsedBase = parseFloat(d.elapsed) || 0;
      this.clockStart = performance.now();
      this.baseTitle = document.title.replace(/^\d+% · /, "");
      this.parts = {};
      var self = this;
      ["status", "percent", "bar", "fill", "message", "elapsed", "eta", "notice", "cancel",
       "schedule", "schedule-time"].forEach(
        function (name) { self.parts[name] = self.querySelector('[data-aa="' + name + '"]'); }
      );
      if (this.parts.cancel) {
        this.parts.cancel.hidden = !!TERMINAL[this.status] || !this.cancelUrl;
        this.parts.cancel.addEventListener("click", function () { self.cancel(); });
      }
      var scheduled = this.parts["schedule-time"];
      this.renderSchedule(this.status, scheduled && scheduled.getAttribute("datetime"));
      this.tick = setInterval(function () { self.renderClock(); }, 1000);
      this.renderClock();
      if ("WebSocket" in window && this.wsPath) {
        this.connect();
      } else {
        this.startPolling();
      }
    }

    disconnectedCallback() {
      this.stop();
    }

    // -- transport ----------------------------------------------------------------
    connect() {
      var self = this;
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var opened = false;
      var socket;
      try {
        socket = new WebSocket(scheme + location.host + this.wsPath);
      } catch (err) {
        this.startPolling();
        return;
      }
      this.socket = socket;
      socket.onmessage = function (event) {
        var message;
        try { message = JSON.parse(event.data); } catch (err) { return; }
        if (!opened) {
          // The server's first frame is the snapshot: only now is the socket useful
          // (a proxy may accept the upgrade and then say nothing).
          opened = true;
          self.failures = 0;
          self.stopPolling();
          self.notice("");
        }
        if (message && message.type === "update" && message.action) self.apply(message.action);
      };
      socket.onclose = function (event) {
        if (self.socket === socket) self.socket = null;
        if (self.done) return;
        if (event.code === 4404) {
          self.notice(self.t.not_found);
          self.stop();
          return;
        }
        self.failures += 1;
        // Keep the page current by polling until the socket is back.
        self.startPolling();
        var delay = Math.min(MAX_BACKOFF_MS, 500 * Math.pow(2, self.failures));
        delay = delay * (0.75 + Math.random() * 0.5);
        self.reconnectTimer = setTimeout(function () { self.connect(); }, delay);
        if (opened) self.notice("Live updates interrupted. Reconnecting…");
      };
    }

    startPolling() {
      if (this.polling || this.done || !this.statusUrl) return;
      var self = this;
      var poll = function () {
        var headers = { Accept: "application/json" };
        // The server answers 304 without a body while the state is the one we hold.
        if (self.etag) headers["If-None-Match"] = self.etag;
        fetch(self.statusUrl, {
          headers: headers,
          credentials: "same-origin",
          cache: "no-store"
        }).then(function (response) {
          if (response.status === 404) {
            self.notice(self.t.not_found);
            self.stop();
            return null;
          }
          if (response.status === 304) {
            if (!self.socket) self.notice("");
            return null;
          }
          if (!response.ok) throw new Error("HTTP " + response.status);
          self.etag = response.headers.get("ETag") || "";
          return response.json();
        }).then(function (action) {
          if (action) {
            if (!self.socket) self.notice("");
            self.apply(action);
          }
        }).catch(function () {
          self.notice("Cannot reach the server. Still trying…");
        }).then(function () {
          if (self.polling) self.polling = setTimeout(poll, self.pollInterval);
        });
      };
      this.polling = setTimeout(poll, 0);
    }

    stopPolling() {
      if (this.polling) clearTimeout(this.polling);
      this.polling = null;
    }

    stop() {
      this.stopPolling();
      clearTimeout(this.reconnectTimer);
      clearInterval(this.tick);
      if (this.socket) {
        var socket = this.socket;
        this.socket = null;
        socket.onclose = null;
        socket.close(1000);
      }
    }

    // -- state --------------------------------------------------------------------
    apply(action) {
      var terminal = !!TERMINAL[action.status];
      if (typeof action.seq === "number") {
        if (action.seq < this.seq && !terminal) return;
        this.seq = Math.max(this.seq, action.seq);
      }
      if (this.status === "pending" && action.status === "running") {
        this.elapsedBase = 0;
        this.clockStart = performance.now();
      }
      this.status = action.status;
      this.percent = Math.max(0, Math.min(100, Number(action.percent) || 0));
      var rounded = Math.floor(this.percent);
      var p = this.parts;
      if (p.fill) p.fill.style.width = this.percent + "%";
      if (p.bar) {
        p.bar.setAttribute("aria-valuenow", String(rounded));
        p.bar.setAttribute("aria-valuetext", rounded + "%" + (action.message ? ", " + action.message : ""));
      }
      if (p.percent) p.percent.textContent = rounded + "%";
      if (p.status) p.status.textContent = action.cancel_requested && !terminal
        ? this.t.cancelling : (this.t[action.status] || action.status);
      if (p.message && action.message) p.message.textContent = action.message;
      if (p.cancel) p.cancel.hidden = terminal || !!action.cancel_requested || !this.cancelUrl;
      this.renderSchedule(action.status, action.run_after);
      this.setAttribute("data-status", action.status);
      document.title = rounded + "% · " + this.baseTitle;
      this.renderClock();
      this.dispatchEvent(new CustomEvent("aa:update", { detail: action, bubbles: true }));
      if (terminal) this.finish(action);
    }

    finish(action) {
      if (this.done) return;
      this.done = true;
      this.stop();
      if (this.parts.eta) this.parts.eta.textContent = "";
      var url = action.result_url || this.resultUrl;
      if (url) window.location.replace(url);
    }

    renderClock() {
      var p = this.parts;
      if (!p.elapsed) return;
      if (this.status === "pending") {
        p.elapsed.textContent = this.t.queued;
        if (p.eta) p.eta.textContent = "";
        return;
      }
      var elapsed = this.elapsedBase + (performance.now() - this.clockStart) / 1000;
      p.elapsed.textContent = this.t.elapsed.replace("%s", formatDuration(elapsed));
      if (!p.eta) return;
      if (this.percent >= 1 && this.percent < 100 && elapsed >= 2 && !TERMINAL[this.status]) {
        p.eta.textContent = this.t.eta.replace(
          "%s", formatDuration(elapsed * (100 - this.percent) / this.percent));
      } else {
        p.eta.textContent = "";
      }
    }

    // "Scheduled for …" while a pending action waits for its run_after, in the
    // browser's own time zone (the server wrote its zone's time as a fallback).
    renderSchedule(status, iso) {
      var box = this.parts.schedule;
      var time = this.parts["schedule-time"];
      if (!box || !time) return;
      var when = iso ? new Date(iso) : null;
      if (status !== "pending" || !when || isNaN(when.getTime())) {
        box.hidden = true;
        return;
      }
      time.setAttribute("datetime", iso);
      var style = {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", timeZoneName: "short"
      };
      try {
        time.textContent = when.toLocaleString(document.documentElement.lang || undefined, style);
      } catch (err) {  // a page language the browser does not know
        time.textContent = when.toLocaleString(undefined, style);
      }
      box.hidden = false;
    }

    notice(text) {
      var el = this.parts.notice;
      if (!el) return;
      el.textContent = text;
      el.hidden = !text;
    }

    cancel() {
      var self = this;
      var button = this.parts.cancel;
      if (button) {
        button.disabled = true;
        button.textContent = this.t.cancelling;
      }
      fetch(this.cancelUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          Accept: "application/json",
          "X-CSRFToken": this.dataset.csrfToken || cookie("csrftoken")
        }
      }).then(function (response) {
        if (response.status === 202 || response.status === 409) {
          // The end arrives over the socket; poll too in case it is down.
          if (!self.socket) self.startPolling();
          return;
        }
        throw new Error("HTTP " + response.status);
      }).catch(function () {
        if (button) {
          button.disabled = false;
          button.textContent = self.t.cancel;
        }
        self.notice(self.t.cancel_failed);
      });
    }
  }

  window.customElements.define("async-action-progress", AsyncActionProgress);
})();
