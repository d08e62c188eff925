#!/usr/bin/env node
// Compiles our contracts with the pinned npm `solc` into abis/<Name>.json:
//   contracts/AlbumNFT.sol     -> abis/AlbumNFT.json        (the product's contract)
//   bench/BenchTransfers.sol   -> abis/BenchTransfers.json  (bench only: cheap Transfer events)
//
//   node contracts/compile.js          write every artifact
//   node contracts/compile.js --check  compile in memory; exit 1 if any committed artifact differs
//
// Each contract is compiled on its own, with settings that name only its source, so adding a
// contract never changes another one's artifact (the settings are recorded in it).
//
// Source names stay relative to the repo root (imports as `@openzeppelin/contracts/...`, resolved
// from node_modules by the import callback) because solc hashes them into the metadata appended to
// the bytecode: absolute paths would make the artifact depend on where the repo is checked out.
"use strict";

const fs = require("fs");
const path = require("path");

const ROOT = path.resolve(__dirname, "..");
const TARGETS = [
  { contractName: "AlbumNFT", sourceName: "contracts/AlbumNFT.sol" },
  { contractName: "BenchTransfers", sourceName: "bench/BenchTransfers.sol" },
];
const NODE_MODULES = path.join(ROOT, "node_modules");

// Loaded from the repo's node_modules, not the caller's cwd, so the pinned compiler is used.
const solc = require(require.resolve("solc", { paths: [ROOT] }));

function artifactPath(target) {
  return path.join(ROOT, "abis", `${target.contractName}.json`);
}

function settingsFor({ contractName, sourceName }) {
  return {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: {
      [sourceName]: {
        [contractName]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"],
      },
    },
  };
}

function isInside(parent, child) {
  const rel = path.relative(parent, child);
  return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel);
}

// Package imports come from node_modules, anything else from the repo root; nothing may escape
// either folder, so a malicious import path cannot read arbitrary files.
function findImports(sourceName) {
  for (const base of [NODE_MODULES, ROOT]) {
    const candidate = path.resolve(base, sourceName);
    if (isInside(base, candidate) && fs.existsSync(candidate)) {
      return { contents: fs.readFileSync(candidate, "utf8") };
    }
  }
  return { error: `import not found: ${sourceName}` };
}

function compile(target) {
  const { contractName, sourceName } = target;
  const settings = settingsFor(target);
  const input = {
    language: "Solidity",
    sources: {
      [sourceName]: { content: fs.readFileSync(path.join(ROOT, sourceName), "utf8") },
    },
    settings,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

  const diagnostics = output.errors || [];
  const errors = diagnostics.filter((d) => d.severity === "error");
  for (const d of diagnostics.filter((d) => d.severity !== "error")) {
    process.stderr.write(d.formattedMessage || `${d.severity}: ${d.message}\n`);
  }
  if (errors.length > 0) {
    for (const d of errors) {
      process.stderr.write(d.formattedMessage || `error: ${d.message}\n`);
    }
    process.exit(1);
  }

  const contract = output.contracts[sourceName][contractName];
  return {
    contractName,
    sourceName,
    abi: contract.abi,
    bytecode: `0x${contract.evm.bytecode.object}`,
    deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
    compiler: { name: "solc", version: solc.version(), settings },
  };
}

function serialize(artifact) {
  return `${JSON.stringify(artifact, null, 2)}\n`;
}

function check(target, artifact) {
  const file = artifactPath(target);
  const rel = path.relative(ROOT, file);
  if (!fs.existsSync(file)) {
    process.stderr.write(`${rel} is missing; run: node contracts/compile.js\n`);
    return 1;
  }
  const committedText = fs.readFileSync(file, "utf8");
  if (committedText === serialize(artifact)) {
    process.stdout.write(`${rel} is up to date\n`);
    return 0;
  }
  let committed;
  try {
    committed = JSON.parse(committedText);
  } catch (e) {
    process.stderr.write(`${rel} is not valid JSON (${e.message}); run: node contracts/compile.js\n`);
    return 1;
  }
  const keys = new Set([...Object.keys(committed), ...Object.keys(artifact)]);
  const differing = [...keys].filter(
    (k) => JSON.stringify(committed[k]) !== JSON.stringify(artifact[k]),
  );
  const what = differing.length > 0 ? `keys differ: ${differing.join(", ")}` : "formatting differs";
  process.stderr.write(`${rel} is stale (${what}); run: node contracts/compile.js\n`);
  return 1;
}

function main(argv) {
  const unknown = argv.filter((a) => a !== "--check");
  if (unknown.length > 0) {
    process.stderr.write(`unknown arguments: ${unknown.join(" ")}\nusage: compile.js [--check]\n`);
    return 2;
  }
  let status = 0;
  for (const target of TARGETS) {
    const artifact = compile(target);
    if (argv.includes("--check")) {
      // Check every artifact (not only up to the first stale one) so one run reports them all.
      status = Math.max(status, check(target, artifact));
      continue;
    }
    const file = artifactPath(target);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, serialize(artifact));
    const size = (artifact.deployedBytecode.length - 2) / 2;
    process.stdout.write(
      `wrote ${path.relative(ROOT, file)} (solc ${artifact.compiler.version}, ` +
        `deployed bytecode ${size} bytes)\n`,
    );
  }
  return status;
}

process.exitCode = main(process.argv.slice(2));
