/** The scenarios `edgemesh bench` knows, in the order they run. */
import { catalogScenario } from './catalog.ts';
import { cipherScenario, dnsScenario, proxyScenario, tunnelScenario } from './node.ts';
import type { Scenario } from './scenario.ts';

export type { BenchContext, RawFigure, Scenario } from './scenario.ts';

export const SCENARIOS: Scenario[] = [catalogScenario, dnsScenario, proxyScenario, tunnelScenario, cipherScenario];
