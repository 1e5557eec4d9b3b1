/** The shape of a scenario of `edgemesh bench` (scenarios.ts lists them): it prints progress and returns a table. */
export interface ScenarioResult {
  table: string;
  rows: Record<string, unknown>[];
}

export interface Scenario {
  name: string;
  description: string;
  run(progress: (line: string) => void): Promise<ScenarioResult>;
}
