// Runs pytest inside real Pyodide under Node (docs/web.md, "Pyodide under Node").
//
//   node run_pytest.mjs <pyodide dir> <manifest.json>
//
// The manifest (written by tests/wire/test_in_pyodide.py) lists the host files to copy into Pyodide's
// in-memory filesystem ([host path, path in Pyodide] pairs), the wheels to unpack ([wheel, folder]), the
// folders to put on sys.path, the working folder and pytest's arguments. The exit code is pytest's (3
// when Pyodide or pytest itself failed); pytest's output goes to our stdout and stderr.
import { readFileSync } from "node:fs";
import { dirname } from "node:path";
import { pathToFileURL } from "node:url";

const RUN_PYTEST = `
import sys
sys.path[:0] = sys_path
sys.dont_write_bytecode = True
import pytest
int(pytest.main(list(pytest_args)))
`;

function writer(stream) {
  return {
    write(bytes) {
      stream.write(bytes);
      return bytes.length;
    },
  };
}

async function main(pyodideDir, manifestPath) {
  const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
  const { loadPyodide } = await import(pathToFileURL(`${pyodideDir}/pyodide.mjs`).href);
  const started = performance.now();
  const pyodide = await loadPyodide({ indexURL: `${pyodideDir}/` });
  const loaded = performance.now();
  pyodide.setStdout(writer(process.stdout));
  pyodide.setStderr(writer(process.stderr));
  for (const [host, guest] of manifest.files) {
    pyodide.FS.mkdirTree(dirname(guest));
    pyodide.FS.writeFile(guest, readFileSync(host));
  }
  for (const [wheel, folder] of manifest.wheels) {
    pyodide.unpackArchive(new Uint8Array(readFileSync(wheel)), "wheel", { extractDir: folder });
  }
  pyodide.FS.mkdirTree(manifest.cwd);
  pyodide.FS.chdir(manifest.cwd);
  pyodide.globals.set("sys_path", pyodide.toPy(manifest.sys_path));
  pyodide.globals.set("pytest_args", pyodide.toPy(manifest.pytest_args));
  const code = await pyodide.runPythonAsync(RUN_PYTEST);
  const seconds = (ms) => (ms / 1000).toFixed(1);
  process.stderr.write(
    `[pyodide] started in ${seconds(loaded - started)} s, tests ran in ${seconds(performance.now() - loaded)} s\n`,
  );
  return code;
}

try {
  process.exitCode = await main(...process.argv.slice(2));
} catch (error) {
  // Pyodide or pytest itself failed (a Python traceback is in the message): no minified stack.
  process.stderr.write(`${error.message ?? error}\n`);
  process.exitCode = 3;
}
