/** The scenarios `edgemesh bench` knows. Each prints progress through `progress` and returns a table. */
import { catalogScenario } from './catalog.ts';
import { dnsScenario, proxyScenario, tunnelScenario } from './node.ts';
import type { Scenario } from './scenario.ts';

export type { Scenario, ScenarioResult } from './scenario.ts';

export const SCENARIOS: Scenario[] = [catalogScenario, dnsScenario, proxyScenario, tunnelScenario];
