/**
 * proxy/ — what a listener serves, as the interception backends (rules.ts) and the UDP conntrack clean-up
 * (conntrack.ts) read it: the proxy module computes these, the backends turn them into DNAT rules.
 */

/** What a listener serves; the rules backends turn these into DNAT rules. */
export interface PortMapping {
  /** `ns/name:portName` (or `ns/name:port` for an unnamed port), as the original's rule comments. */
  service: string;
  protocol: 'TCP' | 'UDP';
  clusterIPs: string[];
  externalIPs: string[];
  loadBalancerIPs: string[];
  port: number;
  listenHost: string;
  listenPort: number;
  /** Forwarded by the kernel straight to these endpoints instead of through the listener; null: the listener. */
  kernel: KernelTarget | null;
}

/** A service port the kernel forwards (rules.ts): TCP, endpoints all reached directly, round robin or random. */
export interface KernelTarget {
  endpoints: { ip: string; port: number }[];
  /** 'source-hash': consistent hashing by client address, in the kernel (nftables only; see `partitions`). */
  pick: 'round-robin' | 'random' | 'source-hash';
  /**
   * source-hash: the ring's partition table as indices into `endpoints` (partition p → endpoint). The rule hashes
   * the client address into a partition with the kernel's jhash under a fixed seed, so every rewrite of the rules
   * keeps each client where it was; the partitions move between endpoints only as the ring moves them.
   */
  partitions?: number[];
  /** ClientIP session affinity: seconds a client address stays with its endpoint since its last connection; 0 = none. */
  affinitySec: number;
  /** Pods' connections too (they are forwarded, so this needs ip_forward and no loopback endpoint). */
  pods: boolean;
}
