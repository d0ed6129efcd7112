import { formatBytes, type DownloadProgress } from "./download.js";

/**
 * Renders download progress on a stream (stderr: stdout carries results). On a terminal one line per
 * file is redrawn in place (bar, bytes, rate, ETA); elsewhere (CI logs, pipes) a plain line is written
 * every few seconds and when a file finishes, so logs stay readable.
 */
export interface ProgressPrinter {
  update(progress: DownloadProgress): void;
  /** A message between progress lines (keeps the in-place line intact). */
  log(message: string): void;
}

export interface ProgressPrinterOptions {
  isTTY?: boolean;
  /** Plain mode: minimum pause between two lines about the same file (default 5 s). */
  plainIntervalMs?: number;
  columns?: number;
}

export function createProgressPrinter(
  stream: NodeJS.WritableStream & { isTTY?: boolean; columns?: number },
  options: ProgressPrinterOptions = {},
): ProgressPrinter {
  const tty = options.isTTY ?? Boolean(stream.isTTY);
  const plainInterval = options.plainIntervalMs ?? 5000;
  let lineOpen = false;
  const lastPlain = new Map<string, number>();

  const endLine = () => {
    if (lineOpen) stream.write("\n");
    lineOpen = false;
  };

  return {
    update(p) {
      if (tty) {
        const width = options.columns ?? stream.columns ?? 100;
        // The bar takes what the numbers leave of the line; on a narrow terminal it goes first.
        const room = width - 1 - formatProgressLine(p, 0).length - 4;
        let text = formatProgressLine(p, room >= 5 ? Math.min(30, room) : 0);
        const overflow = text.length - (width - 1);
        if (overflow > 0 && p.label.length - overflow - 1 >= 8) {
          // Shorten the file name rather than lose the numbers at the end of the line.
          text = formatProgressLine({ ...p, label: `${p.label.slice(0, p.label.length - overflow - 1)}~` }, 0);
        }
        stream.write(`\r${text.slice(0, width - 1)}\x1b[K`);
        lineOpen = true;
        if (p.phase === "done") endLine();
        return;
      }
      const now = Date.now();
      const last = lastPlain.get(p.label);
      const isFirst = last === undefined;
      if (p.phase !== "done" && !isFirst && now - last < plainInterval) return;
      lastPlain.set(p.label, now);
      stream.write(`${formatProgressLine(p)}\n`);
      if (p.phase === "done") lastPlain.delete(p.label);
    },
    log(message) {
      endLine();
      stream.write(`${message}\n`);
    },
  };
}

/** `name  [#####-----]  45%  1.84 GB / 4.08 GB  52.1 MB/s  ETA 43s`; no bar when barWidth is 0. */
export function formatProgressLine(p: DownloadProgress, barWidth = 0): string {
  const parts = [p.label];
  const fraction = p.totalBytes ? Math.min(1, p.receivedBytes / p.totalBytes) : undefined;
  if (barWidth > 0 && fraction !== undefined) {
    const filled = Math.round(fraction * barWidth);
    parts.push(`[${"#".repeat(filled)}${"-".repeat(barWidth - filled)}]`);
  }
  if (fraction !== undefined) parts.push(`${(fraction * 100).toFixed(0).padStart(3)}%`);
  parts.push(
    p.totalBytes !== undefined
      ? `${formatBytes(p.receivedBytes)} / ${formatBytes(p.totalBytes)}`
      : formatBytes(p.receivedBytes),
  );
  switch (p.phase) {
    case "hashing-partial":
      parts.push("checking the partial download");
      break;
    case "verifying":
      parts.push("verifying sha256");
      break;
    case "done":
      parts.push(p.resumedFrom > 0 && p.resumedFrom === p.receivedBytes ? "already present" : "done");
      break;
    default:
      if (p.bytesPerSecond > 0) parts.push(`${formatBytes(p.bytesPerSecond)}/s`);
      if (p.etaSeconds !== undefined) parts.push(`ETA ${formatDuration(p.etaSeconds)}`);
      if (p.resumedFrom > 0) parts.push(`(resumed at ${formatBytes(p.resumedFrom)})`);
  }
  return parts.join("  ");
}

export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}
