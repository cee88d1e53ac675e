// Types of clients/js/token-broker.js (served by the broker at /v1/client.js).
// The response shapes mirror the broker's OpenAPI document (TokenResponse, ElementOut,
// EmbedsResponse, Problem); tests/clients/test_typescript_types.py checks that every
// field named here exists there.

/** `element` of a token grant: what to render besides the token. */
export interface ElementHint {
  /** The custom element's tag, e.g. "em-beddable", "dbn-dashboard", "dbn-metric". */
  tag?: string;
  /** Attributes to set besides `token`, e.g. {"base-url": "..."} or {"dashboard-id": "..."}. */
  attributes?: Record<string, string>;
  /** URL of the vendor's web-component loader; mount() loads it once per document. */
  script?: string | null;
  /** SDK-rendered vendors (Superset, Preset): the package and its options. */
  sdk?: string;
  options?: Record<string, unknown>;
  /** Signed-URL vendors (Metabase): the URL to load in an iframe. */
  iframe?: string;
}

/** The body of `POST /v1/tokens`. */
export interface TokenGrant {
  token: string;
  provider: string;
  embed: string;
  tenant: string;
  /** RFC 3339 UTC. */
  expires_at: string;
  /** Whole seconds left when the broker answered. */
  expires_in: number;
  element: ElementHint;
}

export interface EmbedSummary {
  name: string;
  title: string | null;
  provider: string;
}

/** The body of `GET /v1/embeds`. */
export interface EmbedList {
  tenant: string;
  embeds: EmbedSummary[];
}

export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

export interface TokenBrokerOptions {
  /** Where /v1/... is reachable: "" (this origin), "/analytics" (a same-origin proxy) or a full URL. */
  baseUrl?: string;
  /** Bearer mode: the user's session JWT. Called before each request, and once more after a 401. */
  getSessionToken?: (info: { retry: boolean }) => Promise<string> | string;
  /** fetch's credentials option; "include" sends the session cookie to another origin. */
  credentials?: RequestCredentials;
  /** Refresh when this fraction of a token's lifetime has passed (0 < refreshAt < 1; default 0.8). */
  refreshAt?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  /** Time source and timers (default: Date.now and the global timers). */
  clock?: Clock;
  /** Jitter source in [0, 1) (default: Math.random). */
  random?: () => number;
  /** Document for mount() when the container has no ownerDocument. */
  document?: Document;
}

export interface TokenOptions {
  /** Which of the user's tenants to act for (required when the session grants several). */
  tenant?: string;
  /** Stop waiting (and stop retrying) when aborted. */
  signal?: AbortSignal;
}

export interface MountHandle<E extends Element = HTMLElement> {
  /** The custom element (or iframe) that was appended to the container. */
  readonly element: E;
  /** Stop refreshing and remove the element. No request is made after this. */
  stop(): void;
  /** When the next refresh is due (clock milliseconds), or null when none is scheduled. */
  readonly nextRefresh: number | null;
  /** When the element's current token expires (clock milliseconds). */
  readonly expiresAt: number;
}

export interface TokenEventDetail {
  embed: string;
  tenant: string;
  expires_at: string;
  refreshed: boolean;
}

/** Stable error codes of the broker (docs/api.md), plus the client's own. */
export type TokenBrokerErrorCode =
  | "invalid_request"
  | "request_too_large"
  | "unauthenticated"
  | "invalid_session"
  | "session_expired"
  | "invalid_service_key"
  | "tenant_not_allowed"
  | "embed_not_allowed"
  | "missing_claim"
  | "origin_not_allowed"
  | "rate_limited"
  | "upstream_rejected"
  | "upstream_auth_failed"
  | "upstream_bad_response"
  | "upstream_unavailable"
  | "upstream_timeout"
  | "internal_error"
  | "not_found"
  | "method_not_allowed"
  | "request_timeout"
  | "headers_too_large"
  | "overloaded"
  // the client's own:
  | "network_error"
  | "bad_response"
  | "script_load_failed"
  | "unsupported_element"
  | (string & {});

export class TokenBrokerError extends Error {
  readonly name: "TokenBrokerError";
  /** HTTP status; 0 when the broker could not be reached or a script did not load. */
  readonly status: number;
  readonly code: TokenBrokerErrorCode;
  readonly detail: string;
  readonly title: string | null;
  /** The broker's request id (also in its logs), when known. */
  readonly requestId: string | null;
  /** Seconds from Retry-After, or null. */
  readonly retryAfter: number | null;
}

export interface TokenBrokerEventMap {
  token: CustomEvent<TokenEventDetail>;
  error: CustomEvent<TokenBrokerError>;
}

export class TokenBroker extends EventTarget {
  constructor(options?: TokenBrokerOptions);
  readonly baseUrl: string;
  readonly refreshAt: number;
  /** The grant for an embed; reused until its refresh point, shared by concurrent callers. */
  token(embed: string, options?: TokenOptions): Promise<TokenGrant>;
  /** Create the element in `container` and keep its token fresh until `stop()`. */
  mount<E extends Element = HTMLElement>(
    container: Element,
    embed: string,
    options?: { tenant?: string },
  ): Promise<MountHandle<E>>;
  /** `GET /v1/embeds`: what this user may request for the tenant. */
  embeds(options?: TokenOptions): Promise<EmbedList>;
  addEventListener<K extends keyof TokenBrokerEventMap>(
    type: K,
    listener: (event: TokenBrokerEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof TokenBrokerEventMap>(
    type: K,
    listener: (event: TokenBrokerEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
