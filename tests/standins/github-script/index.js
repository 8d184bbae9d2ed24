// Stand-in for actions/github-script: the workflow's script, run as github-script runs
// it (an async function of require, github, context, core), with the real Octokit of
// @actions/github, whose base URL is the loopback fake GitHub API of the test
// (FLEETFORM_FAKE_GITHUB_API) and never api.github.com.
const core = require("@actions/core");
const github = require("@actions/github");

async function main() {
  const api = process.env.FLEETFORM_FAKE_GITHUB_API || "";
  if (!/^http:\/\/127\.\d+\.\d+\.\d+:\d+$/.test(api)) {
    throw new Error("stand-in: FLEETFORM_FAKE_GITHUB_API (a loopback URL) is not set");
  }
  const token = core.getInput("github-token", { required: true });
  const octokit = github.getOctokit(token, { baseUrl: api });
  const script = core.getInput("script", { required: true });
  const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
  const run = new AsyncFunction("require", "github", "context", "core", script);
  const result = await run(require, octokit, github.context, core);
  core.setOutput("result", core.getInput("result-encoding") === "string" ? String(result) : JSON.stringify(result ?? null));
}

main().catch((error) => core.setFailed(`github-script stand-in: ${error.stack || error}`));
