/**
 * catalog/ — the example catalog: what the embedded default writes on a fresh machine, and what `edgemesh config
 * example-catalog` prints (install.sh writes it for a standalone node).
 */

/** The example catalog the embedded default starts with, so `edgemesh agent` shows something on a fresh machine. */
export const EXAMPLE_CATALOG = `# edgemesh standalone catalog: Kubernetes objects exactly as \`kubectl get -o yaml\` prints them.
# Edit and save: the agent applies changes within a second. See docs/catalog.md.
apiVersion: v1
kind: Service
metadata: { name: hello, namespace: default }
spec:
  clusterIP: 10.96.0.100
  ports: [{ name: http, port: 80, targetPort: 8080, protocol: TCP }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello-1
  namespace: default
  labels: { kubernetes.io/service-name: hello }
addressType: IPv4
ports: [{ name: http, port: 8080, protocol: TCP }]
endpoints:
  - addresses: [127.0.0.1]
    conditions: { ready: true }
`;
