/**
 * The shape of a scenario of `edgemesh bench` (scenarios.ts lists them). `run` is one repeat: it measures each
 * figure and, where there is one, its baseline in the same run, and returns them raw; the command repeats it,
 * takes medians and spreads, and builds the report (report.ts).
 */
import type { Better, Series } from './report.ts';

export interface BenchContext {
  /** Seconds per measurement (each figure and each baseline). */
  duration: number;
  /** Concurrent connections for the request-rate figures. */
  connections: number;
  /** Bytes of each round-trip message. */
  size: number;
  /** Tell the user what runs now, with its live figure when there is one (shown on a terminal only). */
  progress(what: string, figure?: string): void;
  /** Facts the scenario found (the engine it ran on, the bulk path): shown with its figures. */
  fact(key: string, value: string): void;
}

export interface RawFigure {
  id: string;
  label: string;
  unit: string;
  better: Better;
  value: number;
  baseline?: { label: string; value: number };
  /** Raw latencies behind a percentile figure, for its histogram. */
  latencies?: number[];
  series?: Series;
}

export interface Scenario {
  id: string;
  description: string;
  /** Why it cannot run on this node, with what to do, or null. */
  unavailable?(): Promise<string | null>;
  run(ctx: BenchContext): Promise<RawFigure[]>;
}
