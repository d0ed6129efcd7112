/**
 * `ImagingPool`: where the CPU work around the models runs (decoding, preprocessing, masks). Jobs run
 * on libuv's threads through the native addon, at most `concurrency` at once, each splitting a large
 * image's rows across `threads` threads; more jobs wait in order, so a burst of large uploads queues
 * instead of starting threads. The event loop only schedules.
 *
 * One pool per process is the default (`ImagingPool.shared()`): the bound is about the machine's
 * cores, which every pipeline in the process shares. Without the addon, each job runs its TypeScript
 * specification on the calling thread (same results, no parallelism).
 */
import os from "node:os";
import { RegionVqaError } from "../errors.js";
import { loadNativeImaging, type NativeImaging } from "./native.js";

export type ImagingBackend = "native" | "typescript";

export interface ImagingPoolOptions {
  /** Threads one job may split a large image's rows across. Default: the machine's cores, at most 4. */
  threads?: number;
  /** Jobs running at once; more wait in order. Default 2. */
  concurrency?: number;
  /**
   * "native" (the default when the addon is built) or "typescript" (the specifications, on the calling
   * thread: for comparisons and benchmarks).
   */
  backend?: ImagingBackend;
}

export interface ImagingPoolStats {
  /** Slots taken (a kernel running, or other work such as a decode by sharp). */
  active: number;
  /** Kernels running now (native ones on libuv threads; the TypeScript ones block the caller). */
  kernels: number;
  waiting: number;
  /** Jobs finished since the pool was made. */
  completed: number;
}

function positiveInteger(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 1)
    throw new RegionVqaError("invalid_request", `${what} must be a whole number >= 1, got ${value}`);
  return value;
}

export class ImagingPool {
  readonly threads: number;
  readonly concurrency: number;
  readonly backend: ImagingBackend;
  /** Why the TypeScript kernels run, when they do. */
  readonly fallbackReason: string | undefined;
  private readonly addon: NativeImaging | undefined;
  private active = 0;
  private kernels = 0;
  private completed = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(options: ImagingPoolOptions = {}) {
    this.threads = positiveInteger(
      options.threads ?? Math.min(4, os.availableParallelism()),
      "imaging threads",
    );
    this.concurrency = positiveInteger(options.concurrency ?? 2, "imaging concurrency");
    const native = options.backend === "typescript" ? { reason: "backend typescript" } : loadNativeImaging();
    if (options.backend === "native" && !native.addon) {
      throw new RegionVqaError(
        "invalid_request",
        `the native imaging backend is not available: ${native.reason}`,
      );
    }
    this.addon = native.addon;
    this.backend = native.addon ? "native" : "typescript";
    this.fallbackReason = native.reason;
  }

  private static sharedPool: ImagingPool | undefined;

  /** The process's pool (made with the defaults on first use unless `configureShared` came first). */
  static shared(): ImagingPool {
    ImagingPool.sharedPool ??= new ImagingPool();
    return ImagingPool.sharedPool;
  }

  /** Replaces the process's pool for work started from now on (`serve` does this from its settings). */
  static configureShared(options: ImagingPoolOptions): ImagingPool {
    ImagingPool.sharedPool = new ImagingPool(options);
    return ImagingPool.sharedPool;
  }

  /** Installs `pool` as the process's pool and returns the one it replaces (tests restore it). */
  static setShared(pool: ImagingPool): ImagingPool {
    const previous = ImagingPool.shared();
    ImagingPool.sharedPool = pool;
    return previous;
  }

  stats(): ImagingPoolStats {
    return {
      active: this.active,
      kernels: this.kernels,
      waiting: this.waiting.length,
      completed: this.completed,
    };
  }

  /**
   * One job: `native` with the addon and the thread count, or (without the addon) `typescript`, the
   * specification of the same result. Waits for a free slot first.
   */
  run<T>(native: (addon: NativeImaging, threads: number) => Promise<T>, typescript: () => T): Promise<T> {
    const addon = this.addon;
    return this.schedule(async () => {
      this.kernels++;
      try {
        return addon ? await native(addon, this.threads) : typescript();
      } finally {
        this.kernels--;
      }
    });
  }

  /** Any other asynchronous CPU work (decoding with sharp) in a slot of this pool. */
  async schedule<T>(work: () => Promise<T>): Promise<T> {
    if (this.active >= this.concurrency) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active++;
    try {
      return await work();
    } finally {
      this.completed++;
      // The slot passes straight to the longest-waiting job.
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}
