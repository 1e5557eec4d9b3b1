/**
 * The agent's and the gateway's configuration, key for key compatible with the Go original's v1alpha1 files, plus our
 * additions (catalog, stateDir, adminAddress, edgeDNS.listenAddress, logging). Keys the original marks "do not
 * configure" are accepted (real ConfigMaps contain them) and overwritten at run time.
 */
import { multiaddr } from '@multiformats/multiaddr';
import { isIP } from 'node:net';
import {
  bool, checkAbsPathOrEmpty, checkCIDR, checkHostPort, checkIP, checkIPv4, int, parseHostPort, list, num, obj, oneOf, port, str, strMap,
  type Infer,
} from './schema.ts';

const checkUpstream = (v: string): string | null => {
  if (isIP(v)) return null;
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(v);
  return m && isIP(m[1]!) && Number(m[2]) > 0 && Number(m[2]) < 65536 ? null : 'is not an IP or IP:PORT';
};

const metaServer = obj({
  server: str('http://127.0.0.1:10550', { check: (v) => (/^https?:\/\/[^/]+/.test(v) ? null : 'is not an http(s) URL'), allowed: 'an http(s) URL' }),
  security: obj({
    requireAuthorization: bool(false),
    insecureSkipTLSVerify: bool(false),
    tlsCaFile: str('/etc/edgemesh/metaserver/rootCA.crt'),
    tlsCertFile: str('/etc/edgemesh/metaserver/server.crt'),
    tlsPrivateKeyFile: str('/etc/edgemesh/metaserver/server.key'),
  }),
});

export const kubeAPIConfig = obj({
  master: str(''),
  contentType: str('application/vnd.kubernetes.protobuf'),
  qps: num(100, 0),
  burst: int(200, 0),
  kubeConfig: str('', { check: checkAbsPathOrEmpty, allowed: 'an absolute path' }),
  mode: str(''),
  metaServer,
  deleteKubeConfig: bool(false),
});

const pprofConfig = obj({ enableProfiling: bool(false), profilingAddress: str(''), profilingPort: port(0, true) });

const commonConfig = (admin: string) =>
  obj({
    bridgeDeviceName: str('edgemesh0', { check: (v) => (/^[\w.-]{1,15}$/.test(v) ? null : 'is not a valid interface name (1-15 characters)') }),
    bridgeDeviceIP: str('169.254.96.16', { check: checkIPv4, allowed: 'an IPv4 address' }),
    pprofConfig,
    // Additions.
    stateDir: str('/var/lib/edgemesh', { check: (v) => (v.startsWith('/') ? null : 'is not an absolute path'), allowed: 'an absolute path' }),
    adminAddress: str(admin, { check: (v) => (v === '' ? null : checkHostPort(v)), allowed: 'IP:PORT, or "" to disable' }),
    logLevel: oneOf('info', ['debug', 'info', 'warn', 'error']),
    logFormat: oneOf('text', ['text', 'json']),
    /**
     * Drop traffic addressed to bridgeDeviceIP that arrives on an uplink (an interface with a gateway route or
     * this node's InternalIP/ExternalIP): DNS, SOCKS5 and service listeners there answer only the node and its pods.
     * Needs root and nft or iptables; "off" leaves them reachable by any LAN neighbour that routes the address here.
     */
    bridgeGuard: oneOf('auto', ['auto', 'off']),
    /** Interfaces the bridge guard treats as uplinks besides the detected ones (a LAN-only NIC without a gateway route). */
    bridgeGuardInterfaces: list(str('', { check: (v) => (/^[\w.@-]{1,15}$/.test(v) ? null : 'is not a valid interface name (1-15 characters)'), allowed: 'an interface name' })),
    /**
     * The agent's nice value: its one data-path thread keeps its throughput when the board's workloads keep every
     * core busy (src/priority.ts). 0 leaves the scheduler's default. Lowering it needs root or CAP_SYS_NICE.
     */
    nice: int(-10, -20, 19),
  });

const consistentHash = obj({
  partitionCount: int(100, 1, 1_000_000),
  replicationFactor: int(10, 1, 10_000),
  load: num(1.25, 1, 100),
});

function checkRelayAddress(v: string): string | null {
  if (checkIP(v) === null || parseHostPort(v)) return null;
  if (v.startsWith('/')) {
    try {
      multiaddr(v);
      return null;
    } catch (e) {
      return `is not a valid multiaddr (${(e as Error).message})`;
    }
  }
  return 'is not an IP address, IP:port or multiaddr';
}

const relayNode = obj({
  nodeName: str('', { check: (v) => (v ? null : 'is empty (a relay needs its node name)') }),
  /** The original takes IP literals (port = listenPort); we also take `IP:port` and full multiaddrs. */
  advertiseAddress: list(str('', { check: checkRelayAddress, allowed: 'an IP address, IP:port or a /ip4/.../tcp/... multiaddr' })),
});

const edgeTunnel = (listenPort: number) =>
  obj({
    enable: bool(false),
    mode: str(''),
    nodeName: str(''),
    listenPort: port(listenPort),
    transport: oneOf('tcp', ['tcp', 'ws', 'quic']),
    rendezvous: str('EDGEMESH_PLAYGOUND', { check: (v) => (v ? null : 'is empty') }),
    relayNodes: list(relayNode),
    enableIpfsLog: bool(false),
    maxCandidates: int(15, 0, 1000),
    heartbeatPeriod: int(120, 1),
    finderPeriod: int(60, 1),
    // mode is ours: "handshake" proves the PSK inside TLS (bytes encrypted once), "stream" is the original's pnet.
    psk: obj({ enable: bool(true), path: str('/etc/edgemesh/psk', { check: checkAbsPathOrEmpty, allowed: 'an absolute path' }), mode: oneOf('handshake', ['handshake', 'stream']) }),
    tunnelLimitConfig: obj({
      enable: bool(true),
      tunnelBaseStreamIn: int(10240, 0),
      tunnelBaseStreamOut: int(10240, 0),
      tunnelPeerBaseStreamIn: int(1024, 0),
      tunnelPeerBaseStreamOut: int(1024, 0),
    }),
    configPath: str(''),
    listenInterfaces: str('*'),
    extraFilteredInterfaces: str(''),
    metricConfig: obj({ enable: bool(false), port: port(9999) }),
    // Our additions.
    /** XSalsa20 engine of the PSK layer: auto = libsodium when loadable, else the pure-JS engine. */
    cipher: oneOf('auto', ['auto', 'libsodium', 'noble']),
    /** The handshake offered first (both are offered): tls measured faster on Bun (AES-GCM in BoringSSL); noise as the alternative. */
    encryption: oneOf('tls', ['tls', 'noise']),
    /** Deadline for a new peer connection's PSK and TLS handshakes and for a tunnel protocol handshake. */
    handshakeTimeoutMs: int(10000, 100, 600000),
    /** Endpoint addresses this node reaches without the tunnel (e.g. hostNetwork endpoints in its own LAN). */
    directCIDRs: list(str('', { check: checkCIDR, allowed: 'a CIDR' })),
    /** Dial a hostNetwork endpoint directly when this node has a direct tunnel connection to its node at that IP. */
    directHostEndpoints: bool(true),
    /** LAN discovery by multicast DNS under `rendezvous`. */
    mdns: bool(true),
    /** Upgrade relayed connections to direct ones by TCP hole punching (DCUtR; all dials leave from one port). */
    holePunching: bool(true),
    /** Carry proxied TCP connections one after another on reused streams (/edgemesh/tunnel-session/1.0.0) when the peer speaks it. */
    sessions: bool(true),
    /**
     * Ports of this node's own addresses (InternalIP, ExternalIP) that a peer may have it dial, and SOCKS5 may
     * reach: the original allows every port (kubelet, exporters, sshd); by default only ssh.
     */
    nodePorts: list(int(22, 1, 65535), () => [22]),
    /**
     * Overwrite this Node's edgemesh.io/peer-id annotation when it names another peer ID (after this node's
     * identity key was replaced on purpose). Off: a different binding is left alone and reported.
     */
    takeOverBinding: bool(false),
    /**
     * The relay server of a relay node (one listed in relayNodes). Only peers bound to a node get reservations
     * and circuits. Proxied connections live for hours, so by default a circuit has no duration or data limit
     * (the library's defaults, 2 min and 128 KiB, cut every real connection); set them to bound what one circuit
     * may cost the relay.
     */
    relayServer: obj({
      /** Peers holding a reservation at once. */
      maxReservations: int(1024, 1, 1_000_000),
      /** Seconds a relayed connection may last; 0 = no limit. */
      circuitDurationSec: int(0, 0),
      /** MiB a relayed connection may carry (each way); 0 = no limit. */
      circuitDataMiB: int(0, 0),
    }),
  });

/** The edge gateway (gateway/): `edgemesh gateway`, or inside the agent with enable: true. */
const edgeGateway = (enable: boolean) =>
  obj({
    enable: bool(enable),
    nic: str('*'),
    includeIP: str('*'),
    excludeIP: str('*'),
    loadBalancer: obj({ consistentHash }),
    // Our additions.
    /** This gateway's labels: a Gateway serves here when its spec.selector matches them (the original ignores selectors). */
    labels: strMap(() => ({ kubeedge: 'edgemesh-gateway' })),
    /** Largest request body accepted (413 beyond). */
    maxRequestBodyMiB: int(64, 0, 4096),
    /** Deadline for connecting to a backend endpoint (each attempt). */
    connectTimeoutMs: int(5000, 100, 600000),
    /** A request head must be complete this long after its first byte (slowloris); then 408 and close. */
    requestHeadTimeoutMs: int(10000, 100, 600000),
    /** A client connection with no request in flight closes after this; a request body that stalls this long is cut off. */
    idleTimeoutSec: int(60, 1, 86400),
    /** One line per request to the log (client, request line, status, route, endpoint). */
    accessLog: bool(false),
  });

/** Our addition: where the service catalog comes from besides Kubernetes, and where it is persisted. */
const catalog = obj({
  /** A file of Kubernetes objects; when set (or --catalog is given) the agent runs standalone, without Kubernetes. */
  file: str('', { check: (v) => (v === '' || !v.includes('\0') ? null : 'is not a path') }),
  /** Default `<stateDir>/catalog.json`; "" keeps the default, "off" disables persistence. */
  snapshotPath: str(''),
});

export const agentSchema = obj({
  apiVersion: str('agent.edgemesh.config.kubeedge.io/v1alpha1'),
  kind: str('EdgeMeshAgent'),
  kubeAPIConfig,
  commonConfig: commonConfig('127.0.0.1:10551'),
  catalog,
  modules: obj({
    edgeDNS: obj({
      enable: bool(false),
      listenInterface: str(''),
      // Addition: default "" means the bridge device IP, as the original binds.
      listenAddress: str('', { check: (v) => (v === '' ? null : checkIP(v)), allowed: 'an IP address, or "" for the bridge IP' }),
      listenPort: port(53),
      // Additions (the original hard-codes these in its Corefile).
      clusterDomain: str('cluster.local', { check: (v) => (/^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$/i.test(v) ? null : 'is not a domain name'), allowed: 'a domain name' }),
      ttl: int(30, 0, 3600),
      resolvConf: str('/etc/resolv.conf', { check: checkAbsPathOrEmpty, allowed: 'an absolute path' }),
      upstreamServers: list(str('', { check: checkUpstream, allowed: 'IP or IP:PORT' })),
      upstreamTimeoutMs: int(2000, 50, 60_000),
      cacheSize: int(10_000, 0, 10_000_000),
      maxNegativeTTL: int(30, 0, 86400),
      tcpIdleTimeout: int(10, 1, 3600),
      rateLimit: int(0, 0, 10_000_000),
      cacheDNS: obj({
        enable: bool(false),
        autoDetect: bool(true),
        upstreamServers: list(str('', { check: checkUpstream, allowed: 'IP or IP:PORT' })),
        cacheTTL: int(30, 0, 86400),
      }),
    }),
    edgeProxy: obj({
      enable: bool(false),
      listenInterface: str(''),
      serviceFilterMode: oneOf('FilterIfLabelExists', ['FilterIfLabelExists', 'FilterIfLabelDoesNotExists']),
      // Additions.
      listenAddress: str('', { check: (v) => (v === '' ? null : checkIP(v)), allowed: 'an IP address, or "" for the bridge IP' }),
      interception: oneOf('auto', ['auto', 'iptables', 'nftables', 'none']),
      kernelForwarding: bool(true),
      connectTimeoutMs: int(5000, 100, 120_000),
      tcpIdleTimeout: int(0, 0, 7 * 86400),
      spliceBulkBytes: int(1024 * 1024, 0, 2 ** 30),
      maxDialAttempts: int(4, 1, 32),
      udpIdleTimeout: int(60, 1, 86400),
      udpMaxSessions: int(65536, 1, 10_000_000),
      socks5Proxy: obj({ enable: bool(false), listenPort: port(10800), nodeName: str(''), namespace: str('') }),
      loadBalancer: obj({ caller: str(''), nodeName: str(''), consistentHash }),
    }),
    edgeGateway: edgeGateway(false),
    edgeTunnel: edgeTunnel(20006),
    edgeCNI: obj({
      enable: bool(false),
      encapsulationIP: str(''),
      tunMode: int(0),
      meshCIDRConfig: obj({
        cloudCIDR: list(str('', { check: checkCIDR, allowed: 'a CIDR' })),
        edgeCIDR: list(str('', { check: checkCIDR, allowed: 'a CIDR' })),
      }),
    }),
  }),
});

export const gatewaySchema = obj({
  apiVersion: str('gateway.edgemesh.config.kubeedge.io/v1alpha1'),
  kind: str('EdgeMeshGateway'),
  kubeAPIConfig,
  pprofConfig,
  commonConfig: commonConfig('127.0.0.1:10552'),
  catalog,
  modules: obj({
    edgeGateway: edgeGateway(true),
    edgeTunnel: edgeTunnel(20007),
  }),
});

export type AgentConfig = Infer<typeof agentSchema>;
export type GatewayConfig = Infer<typeof gatewaySchema>;
export type KubeAPIConfig = Infer<typeof kubeAPIConfig>;
