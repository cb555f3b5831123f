// Warden console: progressive enhancement only — every page works without this script.
// 1. Live regions: when the server says something was recorded (/console/events, SSE), the
//    page is fetched again and each element marked `data-live` is replaced by its fresh copy,
//    unless you are typing in it. New inbox cards appear; decided ones go.
// 2. Countdowns: `time[data-expires]` counts down to the approval's expiry.
(function () {
  "use strict";
  function busy(el) {
    var a = document.activeElement;
    if (a && el.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA")) return true;
    var inputs = el.querySelectorAll("input:not([type=hidden]):not([type=checkbox])");
    for (var i = 0; i < inputs.length; i++) if (inputs[i].value) return true;
    return false;
  }
  function refresh() {
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (r.redirected || !r.ok) { return null; } return r.text(); })
      .then(function (text) {
        if (text === null) return;
        var fresh = new DOMParser().parseFromString(text, "text/html");
        var seen = {};
        fresh.querySelectorAll("[data-live]").forEach(function (el) {
          var key = el.getAttribute("data-live");
          seen[key] = true;
          var old = document.querySelector('[data-live="' + CSS.escape(key) + '"]');
          if (old) {
            if (!busy(old)) old.replaceWith(document.importNode(el, true));
          } else {
            var list = el.parentElement && el.parentElement.getAttribute("data-live-list");
            var here = list && document.querySelector('[data-live-list="' + CSS.escape(list) + '"]');
            if (here) here.appendChild(document.importNode(el, true));
          }
        });
        document.querySelectorAll("[data-live-list] > [data-live]").forEach(function (el) {
          if (!seen[el.getAttribute("data-live")] && !busy(el)) el.remove();
        });
        var empty = document.querySelector('[data-live="empty"]');
        if (empty && !seen["empty"]) empty.remove();
        tick();
      })
      .catch(function () {});
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-expires]").forEach(function (t) {
      var left = Math.max(0, Math.floor((Date.parse(t.getAttribute("data-expires")) - now) / 1000));
      var out = t.parentElement.querySelector(".left");
      if (out) out.textContent = left === 0 ? "expired" : Math.floor(left / 60) + "m " + String(left % 60).padStart(2, "0") + "s left";
    });
  }
  if (document.querySelector("[data-live]") && window.EventSource) {
    var pending = null;
    var es = new EventSource("/console/events");
    es.addEventListener("change", function () {
      if (pending) return;
      pending = setTimeout(function () { pending = null; refresh(); }, 150);
    });
  }
  var confirmBox = document.getElementById("estop-confirm");
  if (confirmBox) {
    var button = document.getElementById("estop-button");
    button.disabled = !confirmBox.checked;
    confirmBox.addEventListener("change", function () { button.disabled = !confirmBox.checked; });
  }
  tick();
  setInterval(tick, 1000);
})();
