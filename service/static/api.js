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

/** `{status, data}` of a response's status and text, or the ApiError of the contract's error body. */
function answer(status, text) {
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (status < 200 || status >= 300) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(status, error.code || "http_error", error.message || `HTTP ${status}`);
  }
  return { status, data };
}

const unreachable = () => new ApiError(0, "network_error", "The server cannot be reached.");

/**
 * `{status, data}` of a request. `body` is sent as is (FormData for uploads), `json` as JSON. Writes (every
 * method but GET, unless `write: false`, as for searches) carry X-API-Key when one is saved. An aborted
 * request (`signal`) rejects with the browser's AbortError, so callers can tell it from a failure.
 */
export async function request(path, { method = "GET", body, json, write = method !== "GET", signal } = {}) {
  const headers = {};
  if (write && apiKey()) headers["X-API-Key"] = apiKey();
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  let response;
  let text;
  try {
    response = await fetch(path, { method, headers, body: payload, signal });
    text = response.status === 204 ? "" : await response.text();
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw unreachable();
  }
  return answer(response.status, text);
}

/**
 * POST a FormData upload (a write) with XMLHttpRequest, which, unlike fetch, reports upload progress:
 * `onProgress(sent, total)` as the bytes go out. Resolves to the parsed JSON body like `api`.
 */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (apiKey()) xhr.setRequestHeader("X-API-Key", apiKey());
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      try {
        resolve(answer(xhr.status, xhr.responseText).data);
      } catch (error) {
        reject(error);
      }
    });
    xhr.addEventListener("error", () => reject(unreachable()));
    xhr.addEventListener("abort", () => reject(new DOMException("The upload was aborted.", "AbortError")));
    xhr.send(form);
  });
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
