// homeplane dashboard: live updates of the open page over one server-sent-event stream. The
// server sends the page's live region whenever the cluster changes it (and at once on every
// (re)connection); without JavaScript the pages are plain links and forms.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var state = document.getElementById("live-state");
  var badge = document.getElementById("needs");
  var page = document.body.getAttribute("data-live");
  if (!live || !page || !window.EventSource) return;
  var source = null;
  function show(word, on) {
    if (!state) return;
    state.textContent = word;
    state.className = on ? "live on" : "live off";
  }
  function connect() {
    source = new EventSource("/events?page=" + encodeURIComponent(page));
    source.addEventListener("page", function (e) {
      var cut = e.data.indexOf("\n");
      var needs = e.data.slice(0, cut);
      var open = {};
      live.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
      live.innerHTML = e.data.slice(cut + 1);
      live.querySelectorAll("details[id]").forEach(function (d) {
        if (d.id in open) d.open = open[d.id];
      });
      if (badge) { badge.textContent = needs; badge.hidden = needs === "0"; }
      show("live", true);
    });
    source.onopen = function () { show("live", true); };
    source.onerror = function () {
      show("reconnecting…", false);
      // A refused reconnection closes the stream for good: open a new one.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
  }
  connect();
})();
