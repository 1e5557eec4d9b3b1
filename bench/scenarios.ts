/** The scenarios `edgemesh bench` knows. Each prints progress through `progress` and returns a table. */
import { catalogScenario } from './catalog.ts';
import { dnsScenario, proxyScenario, tunnelScenario } from './node.ts';

export interface ScenarioResult {
  table: string;
  rows: Record<string, unknown>[];
}

export interface Scenario {
  name: string;
  description: string;
  run(progress: (line: string) => void): Promise<ScenarioResult>;
}

export const SCENARIOS: Scenario[] = [catalogScenario, dnsScenario, proxyScenario, tunnelScenario];
