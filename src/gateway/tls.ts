/**
 * gateway/ — TLS termination for HTTPS server ports: certificates from `kubernetes.io/tls` Secrets named by
 * `tls.credentialName` (in the Gateway's namespace), chosen per connection by SNI among the port's servers,
 * with each server's minimum and maximum versions (unset: TLS 1.2 to 1.3, where the original allows TLS 1.0 only)
 * and cipher suites; `mode: MUTUAL` requires a client certificate signed by the Secret's `ca.crt` (or by a
 * Secret `<credentialName>-cacert`, istio's convention). A changed Secret takes effect for new connections; open
 * ones keep the certificate they started with.
 *
 * Why node:tls here and Bun.listen elsewhere: Bun.listen takes one certificate per listener, and choosing one by
 * SNI needs the SNICallback that node:tls offers (Bun implements it on its own sockets).
 */
import tls from 'node:tls';
import type { CatalogSnapshot } from '../catalog/catalog.ts';
import { hostMatches, type PortTable, type Server } from './routes.ts';
import type { ClientSock } from './sock.ts';

const VERSIONS: Record<string, tls.SecureVersion | undefined> = {
  TLSV1_0: 'TLSv1', TLSV1_1: 'TLSv1.1', TLSV1_2: 'TLSv1.2', TLSV1_3: 'TLSv1.3', TLS_AUTO: undefined, '': undefined,
};

interface Entry {
  server: Server;
  hosts: string[];
  context: tls.SecureContext;
  mutual: boolean;
  minVersion: tls.SecureVersion;
  maxVersion: tls.SecureVersion;
  /** What the context was built from: an unchanged server keeps its context across rebuilds. */
  input: string;
}

const ORDER: tls.SecureVersion[] = ['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3'];

/** The certificates of one HTTPS port, and which one an SNI name gets. Rebuilt on every catalog change. */
export class PortCertificates {
  readonly entries: Entry[] = [];
  readonly problems: string[] = [];
  /** Fingerprint of what was built from (a rebuild with the same input keeps the listener's contexts). */
  readonly key: string;

  /** `previous`: the set this one replaces; contexts of unchanged servers are taken from it, not parsed again. */
  constructor(pt: PortTable, snap: CatalogSnapshot, previous?: PortCertificates) {
    const parts: string[] = [];
    for (const server of pt.servers) {
      const t = server.tls;
      const where = `Gateway ${server.gateway} port ${server.port}`;
      if (!t || !t.credentialName) {
        this.problems.push(`${where}: HTTPS without tls.credentialName; the server is skipped`);
        continue;
      }
      if (t.mode !== 'SIMPLE' && t.mode !== 'MUTUAL') {
        this.problems.push(`${where}: tls.mode ${t.mode} is not supported for HTTPS (SIMPLE or MUTUAL); the server is skipped`);
        continue;
      }
      const ns = server.gateway.split('/')[0]!;
      const secret = snap.secrets.get(`${ns}/${t.credentialName}`);
      const pem = (k: string, from = secret) => (from?.data[k] ? Buffer.from(from.data[k]!, 'base64').toString('utf8') : '');
      const cert = pem('tls.crt'), key = pem('tls.key');
      if (!cert || !key) {
        this.problems.push(`${where}: Secret ${ns}/${t.credentialName} ${secret ? 'has no tls.crt and tls.key' : 'does not exist'}; the server is skipped`);
        continue;
      }
      const mutual = t.mode === 'MUTUAL';
      const caSecret = snap.secrets.get(`${ns}/${t.credentialName}-cacert`);
      const ca = mutual ? pem('ca.crt') || pem('ca.crt', caSecret) || pem('cacert', caSecret) : '';
      if (mutual && !ca) {
        this.problems.push(`${where}: mode MUTUAL needs ca.crt in Secret ${ns}/${t.credentialName} (or a Secret ${t.credentialName}-cacert); the server is skipped`);
        continue;
      }
      const minVersion = VERSIONS[t.minProtocolVersion.toUpperCase()] ?? 'TLSv1.2';
      const maxVersion = VERSIONS[t.maxProtocolVersion.toUpperCase()] ?? 'TLSv1.3';
      const input = JSON.stringify([server.gateway, server.hosts, t, cert, key, ca]);
      try {
        const context = previous?.entries.find((e) => e.input === input)?.context ?? tls.createSecureContext({
          cert, key, minVersion, maxVersion,
          ...(ca ? { ca } : {}),
          ...(t.cipherSuites.length ? { ciphers: t.cipherSuites.join(':') } : {}),
        });
        this.entries.push({ server, hosts: server.hosts.map((h) => h.host), context, mutual, minVersion, maxVersion, input });
        parts.push(input);
      } catch (e) {
        this.problems.push(`${where}: the certificate of Secret ${ns}/${t.credentialName} cannot be used (${(e as Error).message}); the server is skipped`);
      }
    }
    this.key = parts.join('\n');
  }

  /**
   * The versions the listener offers: the widest of its servers'. OpenSSL fixes a connection's version bounds
   * before the SNI callback switches certificates, so each server's own bounds are checked after the handshake.
   */
  get bounds(): { minVersion: tls.SecureVersion; maxVersion: tls.SecureVersion } {
    const mins = this.entries.map((e) => ORDER.indexOf(e.minVersion));
    const maxs = this.entries.map((e) => ORDER.indexOf(e.maxVersion));
    return { minVersion: ORDER[Math.min(...mins, 2)]!, maxVersion: ORDER[Math.max(...maxs, 3)]! };
  }

  /** The entry for an SNI name: the most specific host match; without SNI or a match, the first server's. */
  forName(name: string | undefined): Entry | undefined {
    if (name) {
      const n = name.toLowerCase();
      let best: Entry | undefined;
      let score = -1;
      for (const e of this.entries) {
        for (const h of e.hosts) {
          if (!hostMatches(h, n)) continue;
          const s = h === '*' ? 0 : h.startsWith('*.') ? h.length : 100_000;
          if (s > score) [best, score] = [e, s];
        }
      }
      if (best) return best;
    }
    return this.entries[0];
  }
}

/**
 * A TLS server on address:port for one HTTPS port. `certs()` is read per connection, so a rebuilt set applies to
 * the next handshake. `onClient` gets each verified connection as a ClientSock plus its events.
 */
export function listenTls(
  address: string,
  port: number,
  certs: () => PortCertificates,
  onClient: (sock: ClientSock, remoteAddress: string, events: { on(ev: 'data', f: (b: Uint8Array) => void): void; on(ev: 'drain' | 'end' | 'close', f: () => void): void }) => void,
): Promise<tls.Server> {
  const first = certs().forName(undefined);
  const server = tls.createServer({
    allowHalfOpen: true,
    ...certs().bounds,
    // Client certificates are asked for when some server on the port is MUTUAL; the verdict is checked per
    // connection against the server its SNI chose (SIMPLE servers on the same port do not require one).
    requestCert: certs().entries.some((e) => e.mutual),
    rejectUnauthorized: false,
    SNICallback: (name, cb) => {
      const e = certs().forName(name);
      if (e) cb(null, e.context);
      else cb(new Error('no certificate'), undefined);
    },
    ...(first ? { secureContext: first.context } : {}),
  });
  server.on('secureConnection', (s: tls.TLSSocket) => {
    const chosen = certs().forName((s as tls.TLSSocket & { servername?: string | false }).servername || undefined);
    const v = ORDER.indexOf(s.getProtocol() as tls.SecureVersion);
    if (!chosen || (chosen.mutual && !s.authorized) || v < ORDER.indexOf(chosen.minVersion) || v > ORDER.indexOf(chosen.maxVersion)) {
      s.destroy();
      return;
    }
    s.setNoDelay(true);
    onClient(new NodeClientSock(s), s.remoteAddress ?? '', s as never);
  });
  server.on('tlsClientError', () => {}); // a failed handshake closes that connection only
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => {
      server.off('error', reject);
      server.on('error', () => {});
      resolve(server);
    });
  });
}

/** A node TLSSocket with Bun's socket semantics: a write is refused (0) while node's buffer is over its mark. */
class NodeClientSock implements ClientSock {
  constructor(private readonly s: tls.TLSSocket) {}
  write(b: Uint8Array): number {
    if (this.s.writableNeedDrain || this.s.destroyed) return 0;
    this.s.write(b);
    return b.length;
  }
  pause(): void {
    this.s.pause();
  }
  resume(): void {
    this.s.resume();
  }
  end(): void {
    this.s.destroySoon();
  }
  shutdown(): void {
    this.s.end();
  }
  terminate(): void {
    this.s.destroy();
  }
}
