// The HTTP API as seen from the UI: one fetch wrapper that sends the API key on writes and turns the
// contract's error body ({"error": {"code", "message"}}) into an ApiError with the server's message.

const KEY_STORAGE = "metah.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY_STORAGE, value);
  else localStorage.removeItem(KEY_STORAGE);
}

/** `?a=1&b=2` of the non-empty values (empty string when none). */
export function queryString(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && String(value) !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * `{status, data}` of a request. `body` is sent as is (FormData for uploads), `json` as JSON. Writes (every
 * method but GET, unless `write: false`, as for searches) carry X-API-Key when one is saved.
 */
export async function request(path, { method = "GET", body, json, write = method !== "GET" } = {}) {
  const headers = {};
  if (write && apiKey()) headers["X-API-Key"] = apiKey();
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch {
    throw new ApiError(0, "network_error", "The server cannot be reached.");
  }
  const text = response.status === 204 ? "" : await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(response.status, error.code || "http_error", error.message || `HTTP ${response.status}`);
  }
  return { status: response.status, data };
}

/** The parsed JSON body of a successful request (null for 204). */
export async function api(path, options) {
  return (await request(path, options)).data;
}

/** The text to show for a failed request: the server's message, with a hint where one helps. */
export function describeError(error) {
  if (!(error instanceof ApiError)) return String(error && error.message ? error.message : error);
  if (error.status === 401) return `${error.message}. Enter the API key at the top right.`;
  return error.message;
}
