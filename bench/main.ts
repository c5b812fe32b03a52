// npm run bench -- <name>: runs bench/<name>.ts's exported benchmark.
// Adding a benchmark is one line in `benches`.

const benches: Record<string, () => Promise<void>> = {
  db: async () => (await import('./db.js')).benchDb(),
  engine: async () => (await import('./engine.js')).benchEngine(),
};

const name = process.argv[2];
const bench = name === undefined ? undefined : benches[name];
if (!bench) {
  const known = Object.keys(benches).join(', ');
  process.stderr.write(`usage: npm run bench -- <name>   (one of: ${known})\n`);
  process.exit(name === undefined ? 2 : 1);
}
await bench();
