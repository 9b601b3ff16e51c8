/* authbridge connect.js: runs a connect flow in a popup and tells the product's page how it
   ended. No dependencies.

     <script src="https://auth.example.com/connect/assets/connect.js"></script>
     authbridge.connect(connectUrl, {
       onConnected: function (r) { ... },   // r.provider, r.connection_id
       onError: function (r) { ... },       // r.error: a stable code (popup_blocked, access_denied, ...)
       onClose: function () { ... }         // closed before the flow ended
     });

   Create the session with "mode": "popup" and a return_url on this page's origin: the popup's
   last page posts its result to that origin only, and this script accepts messages only from
   the gateway's origin and from the popup it opened. Call it from a click handler, or the
   browser blocks the popup. */
(function () {
  "use strict";
  function connect(connectUrl, handlers) {
    var h = handlers || {};
    var origin = new URL(connectUrl, window.location.href).origin;
    var popup = window.open(connectUrl, "authbridge-connect", "popup,width=520,height=720");
    if (!popup) {
      if (h.onError) h.onError({ status: "error", error: "popup_blocked" });
      return null;
    }
    var finished = false;
    function stop() {
      window.removeEventListener("message", onMessage);
      clearInterval(watch);
    }
    function onMessage(event) {
      if (event.origin !== origin || event.source !== popup) return;
      var d = event.data;
      if (!d || d.type !== "authbridge:result") return;
      finished = true;
      stop();
      if (d.status === "connected") {
        if (h.onConnected) h.onConnected({ status: d.status, provider: d.provider, connection_id: d.connection_id });
      } else if (h.onError) {
        h.onError({ status: "error", error: d.error });
      }
    }
    var watch = setInterval(function () {
      if (popup.closed) {
        stop();
        if (!finished && h.onClose) h.onClose();
      }
    }, 250);
    window.addEventListener("message", onMessage);
    return popup;
  }
  window.authbridge = { connect: connect };
})();
