/** Version facts baked in at build time (scripts/build.ts defines EDGEMESH_COMMIT); from package.json otherwise. */
import pkg from '../package.json' with { type: 'json' };

declare const EDGEMESH_COMMIT: string | undefined;

export const VERSION: string = pkg.version;
export const COMMIT: string = typeof EDGEMESH_COMMIT === 'string' ? EDGEMESH_COMMIT : 'dev';
