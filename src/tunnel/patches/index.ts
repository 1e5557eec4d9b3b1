/**
 * tunnel/patches/ — every change the tunnel makes to its libraries, in one place, applied once by the
 * composition root (`applyLibraryPatches(log)`, before the first tunnel starts).
 *
 * Each patch was written against one exact version of its package (PATCHES below). At start the installed
 * versions are compared with the table: a difference is a warning naming the package and both versions, the
 * patch is still applied when the class looks as it expects (each file checks the methods it replaces), except a
 * patch that copies library code (direct-receive), which is then left out. test/tunnel-patches.test.ts fails when
 * package.json moves a patched package away from the table, and has one test per patch that fails without it.
 *
 *   const report = applyLibraryPatches(log);   // [{ name, package, writtenFor, installed, applied }]
 *
 * No upstream issue was found for any of them (searched 2026-12-07); each entry's `without` says what it fixes.
 */
import libp2pPkg from 'libp2p/package.json' with { type: 'json' };
import utilsPkg from '@libp2p/utils/package.json' with { type: 'json' };
import yamuxPkg from '@libp2p/yamux/package.json' with { type: 'json' };
import mainEventPkg from 'main-event/package.json' with { type: 'json' };
import type { Logger } from '../../obs/logger.ts';
import { directReceive } from './direct-receive.ts';
import { quietEvents } from './quiet-events.ts';
import { pausedStaysPaused } from './stream-resume.ts';
import { quietFrames } from './yamux-frames.ts';
import { halfWindowUpdates } from './yamux-window.ts';

export interface PatchEntry {
  name: string;
  /** The file in this folder. */
  file: string;
  package: string;
  /** The package version the patch was written against and tested with. */
  writtenFor: string;
  /** What goes wrong or costs more without it. */
  without: string;
  /** The patch copies library code: left out when the installed version differs from `writtenFor`. */
  copiesLibraryCode?: boolean;
  /** Installs the patch; false when the library does not look as expected (nothing changed). */
  apply(log: Logger): boolean;
}

/** The versions installed, as bundled into this build. */
export const INSTALLED: Readonly<Record<string, string>> = {
  libp2p: libp2pPkg.version,
  '@libp2p/utils': utilsPkg.version,
  '@libp2p/yamux': yamuxPkg.version,
  'main-event': mainEventPkg.version,
};

export const PATCHES: readonly PatchEntry[] = [
  {
    name: 'stream-resume', file: 'stream-resume.ts', package: '@libp2p/utils', writtenFor: '7.4.1',
    without: 'a reader that pauses while resume() hands it buffered bytes has its stream aborted (StreamBufferError) under load',
    apply: () => pausedStaysPaused(),
  },
  {
    name: 'direct-receive', file: 'direct-receive.ts', package: '@libp2p/utils', writtenFor: '7.4.1', copiesLibraryCode: true,
    without: 'every session frame goes through a read-buffer copy and a message event',
    apply: () => directReceive(),
  },
  {
    name: 'yamux-window', file: 'yamux-window.ts', package: '@libp2p/yamux', writtenFor: '8.0.3',
    without: 'every data frame is answered with its own window update',
    apply: () => halfWindowUpdates(),
  },
  {
    name: 'yamux-frames', file: 'yamux-frames.ts', package: '@libp2p/yamux', writtenFor: '8.0.3',
    without: 'every frame builds its trace description although tracing is off',
    apply: (log) => quietFrames(() => log.warn('libp2p patch yamux-frames: the first yamux muxer did not look as expected; its methods are kept', { package: '@libp2p/yamux', installed: INSTALLED['@libp2p/yamux'] })),
  },
  {
    name: 'quiet-events', file: 'quiet-events.ts', package: 'main-event', writtenFor: '1.0.5',
    without: 'every stream write builds events nobody listens to',
    apply: () => quietEvents(),
  },
  {
    // Not a prototype patch: the private transport manager and an instance patch of the peer store, applied per
    // node by node.ts and relays.ts. Listed so a libp2p upgrade is checked against it too.
    name: 'private-api', file: 'private-api.ts', package: 'libp2p', writtenFor: '3.3.11',
    without: 'relays added at run time get no reservation; every stream costs a locked peer-store write',
    apply: () => true,
  },
];

export interface PatchReport {
  name: string;
  package: string;
  writtenFor: string;
  installed: string;
  applied: boolean;
}

/**
 * Whether a patch may be tried with the installed version of its package, and the warning to log when the version
 * is not the one it was written for (null when it is).
 */
export function versionCheck(p: Pick<PatchEntry, 'name' | 'package' | 'writtenFor' | 'copiesLibraryCode'>, installed: string): { tryIt: boolean; warning: string | null } {
  if (installed === p.writtenFor) return { tryIt: true, warning: null };
  const what = p.copiesLibraryCode ? 'left out (it copies library code)' : 'applied only if the library still looks as expected';
  return { tryIt: !p.copiesLibraryCode, warning: `libp2p patch ${p.name}: written for ${p.package} ${p.writtenFor}, installed is ${installed}; ${what}` };
}

let report: PatchReport[] | null = null;

/** Apply every patch once (later calls return the first report). Warnings name the package and the versions. */
export function applyLibraryPatches(log: Logger): PatchReport[] {
  if (report) return report;
  report = PATCHES.map((p) => {
    const installed = INSTALLED[p.package] ?? 'unknown';
    const check = versionCheck(p, installed);
    if (check.warning) log.warn(check.warning, { without: p.without });
    let applied = false;
    if (check.tryIt) {
      applied = p.apply(log);
      if (!applied) log.warn(`libp2p patch ${p.name}: ${p.package} ${installed} does not look as expected; not applied: ${p.without}`);
    }
    return { name: p.name, package: p.package, writtenFor: p.writtenFor, installed, applied };
  });
  return report;
}
