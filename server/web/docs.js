// Starts Swagger UI on /schema (server/api/web.py): a file, not an inline script, so the
// page's Content-Security-Policy can forbid inline scripts. The schema comes from this
// server; the online validator (a request to another site) is off.
"use strict";

const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.specUrl,
  domNode: root,
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
});
