// Runs the CLI from TypeScript sources in a child process, exactly as bin/region-vqa.js runs dist/.
import { main } from "../../src/cli/index.js";

process.exitCode = await main(process.argv);
