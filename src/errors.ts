/**
 * Errors are values with a stable code so callers (and operators reading logs) can act on the kind of failure
 * without parsing messages. The CLI maps codes to exit statuses: CONFIG_* and USAGE → 2, everything else → 1.
 */
export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'CONFIG_NOT_FOUND'
  | 'CONFIG_PARSE'
  | 'USAGE'
  | 'CATALOG_PARSE'
  | 'CATALOG_INVALID'
  | 'SNAPSHOT_CORRUPT'
  | 'SNAPSHOT_IO'
  | 'KUBE_UNREACHABLE'
  | 'KUBE_CONFIG'
  | 'ADMIN_LISTEN'
  | 'ADMIN_UNREACHABLE'
  | 'STATE_DIR'
  | 'FILE_WRITE'
  | 'BUILD'
  | 'TUNNEL_START'
  | 'TUNNEL_DOWN'
  | 'TUNNEL_NO_PEER'
  | 'TUNNEL_DIAL'
  | 'TUNNEL_REFUSED'
  | 'DIAL_FAILED'
  | 'GATEWAY_LISTEN'
  | 'INTERNAL';

export class EdgeMeshError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EdgeMeshError';
    this.code = code;
  }
}

/** Exit status the CLI uses for an error: 2 for usage or configuration, 1 for runtime failures. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof EdgeMeshError && (err.code.startsWith('CONFIG_') || err.code === 'USAGE')) return 2;
  return 1;
}

/** A one-line description of any thrown value, for logs. */
export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' && !err.message.includes(code) ? `${err.message} (${code})` : err.message;
  }
  return String(err);
}
