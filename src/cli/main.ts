#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { configReference } from '../config.js';
import { packageRoot } from '../paths.js';
import { dbCommands } from './db-commands.js';
import { executionCommands } from './execution-commands.js';
import { describeFailure, exitCodes } from './exit.js';

const { version } = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as {
  version: string;
};

const environment = configReference
  .map(
    ({ env, accepted, fallback }) =>
      `  ${env.padEnd(22)} ${accepted}${fallback ? ` (default ${fallback})` : ''}`,
  )
  .join('\n');

const program = new Command('unstuck')
  .description('Durable file-processing workflows on PostgreSQL that never leave work stuck.')
  .version(version)
  .exitOverride()
  .addHelpText(
    'after',
    `
Without DATABASE_URL, unstuck starts its own PostgreSQL server (data in .unstuck/, or
UNSTUCK_DATA_DIR) and stops it when the command ends; \`unstuck db start\` keeps one running.

Environment:
${environment}

Exit codes: 0 done, 1 failure, 2 bad input (configuration, workflow, usage), 3 database
unavailable, 4 no such execution, 130 interrupted.`,
  );
executionCommands(program);
dbCommands(program);

try {
  await program.parseAsync();
} catch (error) {
  if (error instanceof CommanderError && error.exitCode === 0) process.exit(0); // --help, --version
  if (error instanceof Error && error.name === 'AbortError') {
    process.stderr.write(
      'interrupted: the execution goes on when a worker runs (unstuck worker)\n',
    );
    process.exitCode = exitCodes.interrupted;
  } else {
    const { message, code } = describeFailure(error);
    // commander has already printed its own usage errors
    if (!(error instanceof CommanderError)) process.stderr.write(`unstuck: ${message}\n`);
    process.exitCode = code;
  }
}
