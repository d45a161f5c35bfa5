// Custom resources against their CRD schemas (tools/check-k8s, check 2).
//
//   GENFLEET_NODE_DIR=<npm ci of package-lock.json> node crd-validate.mjs resources.json
//
// resources.json is what resources.py wrote: [{file, index, apiVersion, kind,
// name, module, object}]. Each object is checked twice:
//   1. the @kubernetes-models class's validate(): an ajv validator compiled
//      from the upstream CRD's OpenAPI v3 schema (types, required fields,
//      enums, formats, patterns);
//   2. TypeScript's excess-property check against the same package's types
//      (generated from the same schema): the compiled validators accept
//      unknown fields, which the API server rejects under strict field
//      validation (kubectl's default) and prunes otherwise; a misspelt
//      field would silently do nothing.
// Exits 1 when any object is wrong; each message names the file, the
// object and the path inside it.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const nodeDir = process.env.GENFLEET_NODE_DIR;
if (!nodeDir) {
  console.error("check-k8s: schemas: GENFLEET_NODE_DIR is not set");
  process.exit(2);
}
const nm = path.join(nodeDir, "node_modules");
const resources = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const say = (msg) => console.error(`check-k8s: schemas: ${msg}`);
let bad = 0;

const ident = (r) => `${r.file}: ${r.kind}/${r.name} (${r.apiVersion})`;

// ---- 1. the CRD schema validators
for (const r of resources) {
  const file = path.join(nm, `${r.module}.js`);
  if (!fs.existsSync(file)) {
    say(`${ident(r)}: no validator ${r.module} in the installed packages`);
    bad++;
    continue;
  }
  const mod = await import(pathToFileURL(file).href);
  const Cls = mod[r.kind];
  try {
    new Cls(r.object).validate();
  } catch (e) {
    // ajv's message: "data/spec must have required property scaleTargetRef, ..."
    for (const part of String(e.message).split(/, (?=data)/)) {
      say(`${ident(r)}: ${part.replace(/^data\/?/, "").replace(/^ /, "(top) ") || e.message}`);
    }
    bad++;
  }
}

// ---- 2. unknown fields: TypeScript excess-property check
// A pretty-printer that remembers which JSON path each line holds, so a
// TypeScript diagnostic (a line) maps back to a path in the manifest.
function render(value, indent, pathSoFar, lines) {
  const pad = "  ".repeat(indent);
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    let s = "[\n";
    value.forEach((v, i) => {
      const p = `${pathSoFar}/${i}`;
      lines.push(p);
      s += `${pad}  ${render(v, indent + 1, p, lines)}${i + 1 < value.length ? "," : ""}\n`;
    });
    lines.push(pathSoFar);
    return s + `${pad}]`;
  }
  if (value && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 0) return "{}";
    let s = "{\n";
    keys.forEach((k, i) => {
      const p = `${pathSoFar}/${k}`;
      lines.push(p);
      s += `${pad}  ${JSON.stringify(k)}: ${render(value[k], indent + 1, p, lines)}${i + 1 < keys.length ? "," : ""}\n`;
    });
    lines.push(pathSoFar);
    return s + `${pad}}`;
  }
  return JSON.stringify(value);
}

const require = createRequire(path.join(nodeDir, "package.json"));
const ts = require("typescript");
const genDir = fs.mkdtempSync(path.join(nodeDir, "gen-"));
try {
  const files = [];
  const meta = new Map();
  resources.forEach((r, n) => {
    const lines = [];
    const head = [
      `import type { I${r.kind} } from ${JSON.stringify(r.module)};`,
      `export const resource: I${r.kind} = `,
    ];
    const body = render(r.object, 0, "", lines);
    // file line 0 is the import, line 1 ends with the body's opening "{",
    // line 1+j holds lines[j-1]
    const pathOfLine = ["(import)", "(top)", ...lines.map((p) => p || "(top)")];
    const f = path.join(genDir, `r${n}.ts`);
    fs.writeFileSync(f, `${head[0]}\n${head[1]}${body};\n`);
    files.push(f);
    meta.set(f, { r, pathOfLine });
  });
  const program = ts.createProgram(files, {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    skipLibCheck: true,
    types: [],
    lib: ["lib.es2020.d.ts"], // no DOM: the generated files need none, and it halves the time
  });
  const seen = new Set();
  for (const f of files) {
    const sf = program.getSourceFile(f);
    const diags = [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)];
    const { r, pathOfLine } = meta.get(f);
    for (const d of diags) {
      const line = d.file ? d.file.getLineAndCharacterOfPosition(d.start).line : 0;
      const where = pathOfLine[line] ?? `line ${line + 1}`;
      const text = ts.flattenDiagnosticMessageText(d.messageText, " ");
      say(`${ident(r)}: ${where}: ${text}`);
      if (!seen.has(f)) {
        seen.add(f);
        bad++;
      }
    }
  }
} finally {
  fs.rmSync(genDir, { recursive: true, force: true });
}

if (bad) {
  say(`${bad} custom resource check(s) failed of ${resources.length} resource(s)`);
  process.exit(1);
}
const kinds = [...new Set(resources.map((r) => r.kind))].join(", ");
say(`custom resources ok (${resources.length}: ${kinds}; CRD schema validators and unknown-field check)`);
