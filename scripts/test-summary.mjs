// Reads vitest's JSON report and prints the plain closing line CI looks for: "N passed, N failed".
// Usage: node scripts/test-summary.mjs REPORT.json [VITEST_EXIT_CODE]
// A run that vitest failed for reasons its counts do not show (unhandled errors, a file that did not
// load) is counted as one more failure, so the summary never reads clean when the run was not.
import { readFileSync } from "node:fs";

const [file, exitCodeArg] = process.argv.slice(2);
const vitestExit = exitCodeArg === undefined ? 0 : Number(exitCodeArg);
let passed = 0;
let failed = 0;
let skipped = 0;
try {
  const report = JSON.parse(readFileSync(file, "utf8"));
  passed = report.numPassedTests ?? 0;
  failed = report.numFailedTests ?? 0;
  skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
  for (const suite of report.testResults ?? []) {
    if (suite.status === "failed" && (suite.assertionResults ?? []).length === 0) failed += 1;
  }
} catch (err) {
  console.error(`test-summary: cannot read ${file}: ${err.message}`);
  failed = Math.max(failed, 1);
}
if (vitestExit !== 0 && failed === 0) {
  console.log(
    "test-summary: vitest exited non-zero without a failed test (unhandled errors?): counted as 1 failure",
  );
  failed = 1;
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
