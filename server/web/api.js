// The API, as the web app uses it: same-origin fetch with the HttpOnly session cookie,
// the CSRF header on unsafe methods, and errors turned into sentences for people.

export class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || "http_error";
    this.detail = body?.detail ?? null;
    this.retryAfter = retryAfter;
  }
}

const networkError = () => new ApiError(0, { code: "network" });

function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)chexray_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

function headersFor(method, extra = {}) {
  const h = { Accept: "application/json", ...extra };
  if (!["GET", "HEAD"].includes(method)) h["X-CSRF-Token"] = csrfToken();
  return h;
}

async function parse(response) {
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) throw new ApiError(response.status, body, response.headers.get("retry-after"));
  return body;
}

export async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: headersFor(method, body ? { "Content-Type": "application/json" } : {}),
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch {
    throw networkError();
  }
  return parse(response);
}

// Upload with progress (fetch cannot report upload progress; XHR can).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.withCredentials = true;
    for (const [k, v] of Object.entries(headersFor("POST"))) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress("upload", e.loaded / e.total);
    xhr.upload.onload = () => onProgress("analyse", 1);
    xhr.onerror = () => reject(networkError());
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      reject(new ApiError(xhr.status, body, xhr.getResponseHeader("retry-after")));
    };
    xhr.send(form);
  });
}

const MESSAGES = {
  network: "Cannot reach the CheXray server. Check your connection and try again.",
  unsupported_format: "That file is not a PNG, JPEG or DICOM image. Choose an X-ray image file.",
  unsupported_transfer_syntax: "This DICOM file uses a compression CheXray cannot read. Export it uncompressed or as PNG.",
  corrupt_image: "The image file seems damaged or cut short. Try exporting it again.",
  no_pixel_data: "This DICOM file holds no image.",
  empty_image: "The file is empty.",
  invalid_credentials: "Wrong username or password.",
  username_taken: "That username is taken. Choose another one.",
  password_mismatch: "The two passwords do not match.",
  not_authenticated: "Please log in first.",
  invalid_token: "Your session has ended. Please log in again.",
  csrf_failed: "Your session could not be verified. Reload the page and try again.",
  not_found: "Not found: it may have been deleted, or it belongs to another account.",
  key_limit: "You have as many API keys as an account may hold. Revoke one you no longer use first.",
};

export function humanMessage(err) {
  if (!(err instanceof ApiError)) return "Something went wrong in the page. Reload and try again.";
  const wait = err.retryAfter ? ` Try again in ${err.retryAfter} seconds.` : "";
  switch (err.code) {
    case "rate_limited": return `Too many attempts.${wait || " Wait a minute and try again."}`;
    case "overloaded": return `The server is busy right now.${wait}`;
    case "not_ready": return `The models are still loading.${wait || " Try again shortly."}`;
    case "weak_password": return `The password ${(err.detail?.problems || []).join(" and ") || "is too weak"}.`;
    case "image_too_large": case "image_too_many_pixels": case "payload_too_large":
      return `The image is too large: ${err.message}`;
    case "invalid_request": return "Some fields are missing or invalid. Check the form.";
    case "internal_error": return `Something went wrong on the server. ${err.message}`;
  }
  return MESSAGES[err.code] || err.message || `The request failed (HTTP ${err.status}).`;
}
