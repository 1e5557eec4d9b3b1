// The patched packages' own package.json (their exports maps do not list it; Bun resolves it regardless and
// bundles it into the binary), read by index.ts to compare the installed versions with the patch table.
declare module 'libp2p/package.json' {
  const pkg: { version: string };
  export default pkg;
}
declare module '@libp2p/utils/package.json' {
  const pkg: { version: string };
  export default pkg;
}
declare module '@libp2p/yamux/package.json' {
  const pkg: { version: string };
  export default pkg;
}
declare module 'main-event/package.json' {
  const pkg: { version: string };
  export default pkg;
}
